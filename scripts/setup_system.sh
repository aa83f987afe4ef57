#!/usr/bin/env bash
# Install the Debian packages visalign's renderers need, when missing. Idempotent.
# As root it installs them; otherwise it prints the command to run and fails.
set -euo pipefail

PKGS_BASE=(chromium fonts-dejavu-core fonts-liberation poppler-utils bubblewrap)
PKGS_TEX=(texlive-latex-base texlive-latex-recommended texlive-latex-extra)

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have "${VISALIGN_CHROMIUM:-chromium}" || missing+=(chromium)
have bwrap || missing+=(bubblewrap)
have pdftoppm || missing+=(poppler-utils)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
if ! have pdflatex || ! have kpsewhich; then
  missing+=("${PKGS_TEX[@]}")
else
  for f in standalone.cls booktabs.sty multirow.sty makecell.sty; do
    if [ -z "$(kpsewhich "$f" 2>/dev/null)" ]; then missing+=("${PKGS_TEX[@]}"); break; fi
  done
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: system packages present"
  exit 0
fi
# unique, in order
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing system packages: ${missing[*]}" >&2
  echo "setup: install them with:  sudo apt-get update && sudo $cmd" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
$cmd -qq
echo "setup: system packages installed"
