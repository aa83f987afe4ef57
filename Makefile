# visalign: `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visalign-installed

.PHONY: setup system demo demo-flow demo-reward demo-reward-chart test test-fast lint bench clean

setup: system $(STAMP)

system:
	@bash scripts/setup_system.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "visalign needs Python >= 3.10"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/visalign render auto examples/*.py examples/*.tex examples/*.svg examples/*.html \
		-o out/demo --gallery --timeout 20
	$(VENV)/bin/visalign eval examples/eval/chart2code.jsonl --task chart \
		--rewards execution,format,render_similarity --out out/demo-eval
	rm -rf out/demo-grpo
	$(VENV)/bin/visalign data charts 400 out/demo-grpo/data/train.jsonl --seed 2 \
		--exclude models/tiny-chart-vlm/heldout.jsonl
	$(VENV)/bin/visalign train grpo configs/chart_grpo_demo.yaml
	@echo "demo: open out/demo/index.html (renders), out/demo-eval/report.html (eval report) and"
	@echo "      out/demo-grpo/comparison.html (the tiny chart-to-code policy before / after GRPO)"

# the second demo (~4-9 minutes on 2 cores): Flow-GRPO on the shipped tiny text-to-image model
demo-flow: setup
	$(PY) scripts/flow_grpo_demo.py --out out/demo-flow --minutes 0 --eval-per-caption 64 --threads 1
	@echo "demo-flow: open out/demo-flow/before_after.png and out/demo-flow/summary.json"

# the reward-model demo (~12 minutes on 2 cores): rendered chart pairs -> a tiny Bradley-Terry reward model ->
# held-out pairwise accuracy (bootstrap interval, per perturbation kind, calibration) and ladder ranking; a tiny
# judge trained with GRPO; ReFL (DRaFT) on the shipped shapes model with a differentiable reward, judged by a
# reward it was not trained on (chart GRPO with the trained reward model: make demo-reward-chart)
demo-reward: setup
	rm -rf out/demo-reward out/demo-refl out/demo-judge
	$(PY) scripts/reward_demo.py --out out/demo-reward --threads 2
	$(PY) scripts/judge_demo.py --out out/demo-judge --data out/demo-reward/data --train-refs 48 --eval-refs 20 \
		--val-refs 8 --view diff --short-think --warmup-embeddings-only --sft-warmup-labelled 150 --sft-lr 3e-4 \
		--sft-batch 16 --sft-until-val 0.7 --sft-restarts 2 --sft-min-val 0.6 --lr 1e-4 --steps 150 \
		--signal-rows 48 --threads 2
	$(PY) scripts/refl_demo.py --out out/demo-refl --minutes 3 --eval-per-caption 32
	@echo "demo-reward: open out/demo-reward/summary.json, run/curves.png and run/eval/calibration.png;"
	@echo "             out/demo-judge/summary.json (the judge's held-out accuracy before / after GRPO);"
	@echo "             out/demo-refl/summary.json and its before / after grid"

# chart GRPO with a trained reward model (~40 minutes on 2 cores): the BT model of demo-reward retrained
# with the tiny policy's own samples (on-policy pairs, colour counterfactuals), GRPO with it + the exact colour
# name, a placebo-reward control run, then the held-out charts scored once against the start and the placebo
CHART := out/demo-reward-chart
demo-reward-chart: setup
	rm -rf $(CHART)
	$(PY) scripts/reward_demo.py --out $(CHART)/synthetic --threads 2
	$(PY) scripts/onpolicy_pairs.py --out $(CHART)/onpolicy --synthetic $(CHART)/synthetic --charts 240 \
		--val-charts 40 --data-only
	$(PY) scripts/colour_pairs.py --onpolicy $(CHART)/onpolicy --out $(CHART)/colour-pairs --val-charts 40
	$(PY) scripts/onpolicy_pairs.py --out $(CHART)/onpolicy --synthetic $(CHART)/synthetic --charts 240 \
		--val-charts 40 --threads 2 --extra-train $(CHART)/colour-pairs/train.jsonl
	$(PY) scripts/colour_pairs.py --onpolicy $(CHART)/onpolicy --out $(CHART)/colour-pairs \
		--evaluate $(CHART)/onpolicy/run/model $(CHART)/synthetic/run/model
	$(PY) scripts/reward_grpo_demo.py --out $(CHART)/placebo --control placebo --beta 0.04 --steps 48 \
		--val-charts 48 --eval-every 16
	$(PY) scripts/reward_grpo_demo.py --out $(CHART)/grpo --reward-model $(CHART)/onpolicy/run/model \
		--colour-match-weight 3 --beta 0.04 --steps 48 --val-charts 48 --eval-every 16
	$(PY) scripts/reward_grpo_demo.py --out $(CHART)/grpo --heldout-step 48 --baseline $(CHART)/placebo
	@echo "demo-reward-chart: $(CHART)/grpo/summary_heldout_step48.json (held-out: start, placebo, GRPO) and"
	@echo "                   $(CHART)/grpo/grid_heldout_step48.png (reference | before | after)"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples scripts

# tests run in one process per core (at most 4), each test file in one process (module fixtures such
# as the attack corpus start once); PYTEST_WORKERS=0 runs them in this process (for pdb)
PYTEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile)

# the full suite, as CI runs it (~10 minutes on 2 cores; it lists its 25 slowest tests)
test: setup lint
	$(VENV)/bin/pytest -q $(XDIST) --durations=25

# the edit loop (under 3 minutes on 2 cores): every test not marked slow (a test over ~3 s is marked
# @pytest.mark.slow; `make test` still runs it)
test-fast: setup lint
	$(VENV)/bin/pytest -q $(XDIST) -m "not slow"

bench: setup
	$(PY) benchmarks/render_throughput.py --markdown

clean:
	rm -rf out .pytest_cache .ruff_cache
