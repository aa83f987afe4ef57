"""The ``visalign`` command line.

    visalign render KIND INPUT... -o OUTDIR [--timeout S] [--dpi N] [--workers N] [--json] [--gallery]
    visalign score METRIC PRED REF [--json]
    visalign eval DATA.jsonl --task chart|table|svg|html|t2i [--rewards r1,r2] --out DIR [--workers N] [--limit N]
    visalign doctor [--json] [--quick]

Exit status 0 when inputs merely fail to render (that is data), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("visalign")


def _render_cmd(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .renderers import EXTENSIONS, RENDERERS, renderer_class

    inputs, missing = _expand_inputs(args.inputs, args.kind, EXTENSIONS)
    if not inputs:
        print("visalign render: nothing to render", file=sys.stderr)
        return 2
    if args.kind == "auto":
        kinds = [EXTENSIONS[p.suffix.lower()] for p in inputs]
    else:
        kinds = [args.kind] * len(inputs)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    names = _output_names(inputs)
    records: list[dict | None] = [None] * len(inputs)
    bar = tqdm(total=len(inputs), desc="render", unit="input", file=sys.stderr,
               disable=True if len(inputs) < 2 else None)
    for kind in [k for k in RENDERERS if k in kinds]:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        try:
            options = _renderer_options(renderer_class(kind), args)
            renderer = renderer_class(kind)(**options)
        except Exception as exc:  # a missing backend fails its inputs, not the whole command
            log.error("the %s renderer could not start: %s", kind, exc)
            for i in idx:
                records[i] = {"input": str(inputs[i]), "ok": False, "output": None, "error_kind": "internal",
                              "error": f"{kind} renderer unavailable: {exc}", "seconds": 0.0, "renderer": kind}
                bar.update(1)
            continue
        with renderer:
            chunk = max(4, 4 * int(getattr(renderer, "workers", 0) or options.get("workers") or 2))
            for start in range(0, len(idx), chunk):
                part = idx[start:start + chunk]
                sources = [_read(inputs[i]) for i in part]
                for i, res in zip(part, renderer.render_batch(sources), strict=True):
                    out = None
                    if res.ok and res.image is not None:
                        out = outdir / names[i]
                        res.image.save(out)
                    records[i] = {"input": str(inputs[i]), "ok": res.ok, "output": str(out) if out else None,
                                  "error_kind": res.error_kind, "error": res.error,
                                  "seconds": round(res.seconds, 4), "renderer": kind}
                    bar.update(1)
    bar.close()
    if args.gallery:
        from .report.gallery import write_gallery

        page = write_gallery([r for r in records if r is not None], outdir,
                             sources=[_read(p) for p in inputs])
        print(f"gallery: {page}", file=sys.stderr)
    ok = 0
    for rec in records:
        assert rec is not None
        ok += rec["ok"]
        if args.json:
            print(json.dumps(rec), flush=True)
        elif not rec["ok"]:
            print(f"FAIL {rec['input']}: {rec['error_kind']}: {rec['error']}", file=sys.stderr)
    if not args.json:
        print(f"rendered {ok}/{len(records)} into {outdir}", file=sys.stderr)
    return 1 if missing else 0


def _expand_inputs(paths: Sequence[str], kind: str, extensions: dict[str, str]) -> tuple[list[Path], list[str]]:
    """The files to render: a directory stands for its files of a known extension (of ``kind``'s, when
    named); a file of an unknown extension (with ``auto``) or a directory with nothing to render is
    skipped with a warning, so one bad path never stops the others. Returns the files and the paths
    that do not exist (also warned about)."""
    wanted = {e for e, k in extensions.items() if kind in ("auto", k)}
    files: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in wanted)
            if not found:
                print(f"visalign render: skipping directory {p}: no {' '.join(sorted(wanted))} files in it",
                      file=sys.stderr)
            files += found
        elif not p.is_file():
            print(f"visalign render: no such file: {p}", file=sys.stderr)
            missing.append(raw)
        elif kind == "auto" and p.suffix.lower() not in extensions:
            print(f"visalign render: skipping {p}: cannot tell its renderer (known extensions: "
                  f"{' '.join(sorted(extensions))}); name the kind to render it", file=sys.stderr)
        else:
            files.append(p)
    return files, missing


def _read(path: Path) -> str:
    """A file's text; undecodable bytes become replacement characters (the renderer then fails it)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _output_names(inputs: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in inputs:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
    return names


def _renderer_options(cls: type, args: argparse.Namespace) -> dict:
    params = inspect.signature(cls.__init__).parameters
    options: dict = {"timeout": args.timeout}
    if args.dpi is not None:
        if "dpi" in params:
            options["dpi"] = args.dpi
        elif "device_scale_factor" in params:
            options["device_scale_factor"] = args.dpi / 96.0
        else:
            log.warning("--dpi is ignored by the %s renderer", cls.name)
    if args.workers is not None and "workers" in params:
        options["workers"] = args.workers
    return options


def _score_cmd(args: argparse.Namespace) -> int:
    from .score import ScoreError, score_files

    for p in (args.pred, args.ref):
        if not Path(p).is_file():
            print(f"visalign score: no such file: {p}", file=sys.stderr)
            return 2
    try:
        value, details = score_files(args.metric, args.pred, args.ref, timeout=args.timeout)
    except ScoreError as exc:
        print(f"visalign score: {exc}", file=sys.stderr)
        return 2
    if "resized" in details:
        r = details["resized"]
        print(f"visalign score: warning: the prediction ({r['pred'][0]}x{r['pred'][1]}) was resized to the "
              f"reference ({r['ref'][0]}x{r['ref'][1]}) before comparing", file=sys.stderr)
    if args.json:  # strict JSON has no inf (psnr of identical images): write it as a string
        shown = value if math.isfinite(value) else str(value)
        print(json.dumps({"score": shown, **details}, default=str))
    else:
        print(f"{value:.6f}")
    return 0


def _eval_cmd(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    if not Path(args.data).is_file():
        print(f"visalign eval: no such file: {args.data}", file=sys.stderr)
        return 2
    rewards = [r.strip() for r in args.rewards.split(",") if r.strip()] if args.rewards else None
    try:
        options = _load_options(args.reward_options)
        data = args.data
        if args.model:  # generate first (resumable), then score what was generated
            from .generate import generate_completions, make_backend

            backend = make_backend(args.model, model_name=args.model_name, api_key_env=args.api_key_env,
                                   max_new_tokens=args.max_new_tokens)
            try:
                data = generate_completions(args.data, args.task, args.out, backend=backend, limit=args.limit,
                                            workers=args.workers, progress=True)
            finally:
                backend.close()
        summary = run_eval(data, args.task, rewards, args.out, workers=args.workers, limit=args.limit,
                           timeout=args.timeout, reward_options=options, log_samples=args.log_samples)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"visalign eval: {exc}", file=sys.stderr)
        return 2
    if not summary:
        return 0
    for name, s in summary["rewards"].items():
        lo, hi = s["ci95"]
        print(f"{name:<20} {s['mean']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]  n={s['n']}")
    if "execution_rate" in summary:
        print(f"{'execution rate':<20} {summary['execution_rate']:.1%}")
    print(f"report: {Path(args.out) / 'report.html'}")
    unscored = [n for n, s in summary["rewards"].items() if s["n"] == 0]
    for name in unscored:  # a reward that applies to no row is a mistake, not a NaN to read past
        print(f"visalign eval: reward {name!r} scored no row ({summary['rewards'][name]['not_applicable']} not "
              f"applicable: see 'details' in results.jsonl for the reason)", file=sys.stderr)
    return 1 if unscored else 0


def _load_options(text: str | None) -> dict | None:
    """``--reward-options``: inline JSON, or a .json / .yaml file holding {reward: {option: value}}."""
    if not text:
        return None
    if Path(text).is_file():
        import yaml

        data = yaml.safe_load(Path(text).read_text())
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--reward-options is neither a file nor JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError("--reward-options must map reward names to option mappings")
    return data


TRAINERS = {  # visalign train NAME -> (config class, entry point), imported on use
    "grpo": ("visalign.trainers.vlm", "VLMGRPOConfig", "train_grpo_from_config"),
    "sft": ("visalign.trainers.sft", "SFTConfig", "train_sft_from_config"),
    "flow": ("visalign.trainers.flow", "FlowGRPOConfig", "train_flow_from_config"),
    "reward": ("visalign.trainers.reward_model", "RewardModelConfig", "train_reward_from_config"),
}


def _train_cmd(args: argparse.Namespace) -> int:
    import importlib

    from .trainers.config import describe_config, parse_overrides

    if getattr(args, "check_model", None):
        if args.trainer != "grpo":
            print("visalign train: --check-model checks VLMs for grpo", file=sys.stderr)
            return 2
        from .trainers.prompting import check_vlm, format_check

        check = check_vlm(args.check_model)
        print(format_check(check))
        return 0 if check.supported else 1
    module, config_name, entry = TRAINERS[args.trainer]
    refl = False
    if args.trainer == "flow":  # --algorithm, else the config's algorithm key: grpo (Flow-GRPO) or refl (ReFL / DRaFT)
        from .trainers.flow import flow_algorithm

        try:
            config_file = args.config if args.config and Path(args.config).is_file() else None
            refl = flow_algorithm(config_file, args.algorithm) == "refl"
        except (ValueError, OSError) as exc:
            print(f"visalign train flow: {exc}", file=sys.stderr)
            return 2
        if refl:
            module, config_name, entry = "visalign.trainers.refl", "ReFLConfig", "train_refl_from_config"
    elif args.algorithm:
        print(f"visalign train {args.trainer}: --algorithm is an option of `train flow`", file=sys.stderr)
        return 2
    mod = importlib.import_module(module)
    if args.describe:
        if args.trainer == "flow" and (args.config or args.set):  # resolved values and where each came from
            try:
                describe = mod.describe_refl_options if refl else mod.describe_flow_options
                print(describe(args.config, **parse_overrides(args.set)))
            except (ValueError, OSError) as exc:
                print(f"visalign train flow: {exc}", file=sys.stderr)
                return 2
            return 0
        if args.trainer == "reward" and args.mode == "judge":  # the judge's options are GRPO's + its own
            from .trainers.judge import JudgeGRPOConfig

            print(describe_config(JudgeGRPOConfig))
            return 0
        print(describe_config(getattr(mod, config_name)))
        return 0
    if not args.config:
        print(f"visalign train {args.trainer}: give a CONFIG file (or --describe for its options)", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"visalign train {args.trainer}: no such file: {args.config}", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.set)
        if args.mode:
            overrides["mode"] = args.mode
        if refl:
            overrides["algorithm"] = "refl"
        getattr(mod, entry)(args.config, **overrides)
    except ValueError as exc:  # bad options or data: one line; anything else keeps its traceback
        print(f"visalign train {args.trainer}: {exc}", file=sys.stderr)
        return 2
    return 0


def _data_cmd(args: argparse.Namespace) -> int:
    from .data.charts import chart_dataset
    from .data.loaders import write_jsonl

    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    exclude: set[str] = set()
    for other in args.exclude or ():
        from .data.loaders import load_rows

        exclude |= {r["code"] for r in load_rows(other) if r.get("code")}
    rows = chart_dataset(args.n, seed=args.seed, workers=args.workers, exclude=exclude,
                         **({"kinds": kinds} if kinds else {}))
    path = write_jsonl(rows, args.out)
    print(f"{len(rows)} charts -> {path}")
    return 0


def _doctor_cmd(args: argparse.Namespace) -> int:
    from .doctor import diagnose, format_report

    report = diagnose(render_check=not args.quick)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .renderers import RENDERERS

    parser = argparse.ArgumentParser(prog="visalign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"visalign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render code files into PNG images",
                       description="Render each INPUT with the KIND renderer into OUTDIR/<stem>.png.")
    r.add_argument("kind", choices=[*sorted(RENDERERS), "auto"],
                   help="renderer; 'auto' picks it from each file's extension")
    r.add_argument("inputs", nargs="+", metavar="INPUT")
    r.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per input (default 10)")
    r.add_argument("--dpi", type=float, default=None, help="resolution (matplotlib, latex; html: scale)")
    r.add_argument("--workers", type=int, default=None, help="parallel sandboxed workers (default: CPUs)")
    r.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    r.add_argument("--gallery", action="store_true", help="also write OUTDIR/index.html showing every input")
    r.set_defaults(func=_render_cmd)

    from .score import METRICS

    sc = sub.add_parser("score", help="score a prediction file against a reference file",
                        description="Images are compared directly; code is rendered first (image metrics) "
                                    "or compared as code (teds, teds_structure, chart_code).")
    sc.add_argument("metric", choices=METRICS)
    sc.add_argument("pred")
    sc.add_argument("ref")
    sc.add_argument("--timeout", type=float, default=10.0, help="seconds per render (default 10)")
    sc.add_argument("--json", action="store_true", help="print the score with its details as JSON")
    sc.set_defaults(func=_score_cmd)

    from .languages import TASKS

    ev = sub.add_parser("eval", help="render and score a JSONL of generations; write results and a report",
                        description="Each line: completion or code (or image), reference_image and/or "
                                    "reference_code, prompt; with --model the completions are generated first. "
                                    "Rerunning resumes.")
    ev.add_argument("data", metavar="DATA.jsonl")
    ev.add_argument("--task", required=True, choices=sorted(TASKS))
    ev.add_argument("--rewards", default=None, help="comma-separated reward names (default: the task's)")
    ev.add_argument("--out", required=True, metavar="DIR")
    ev.add_argument("--workers", type=int, default=None, help="sandboxed render workers (default: CPUs)")
    ev.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    ev.add_argument("--timeout", type=float, default=10.0, help="seconds per render (default 10)")
    ev.add_argument("--reward-options", default=None, metavar="JSON|FILE",
                    help='options per reward, e.g. \'{"clip": {"pretrained": "/models/clip.pt"}}\' or a YAML file')
    ev.add_argument("--model", default=None, metavar="PATH_OR_URL",
                    help="generate the completions first: a local HF VLM (directory or hub id) or an "
                         "OpenAI-compatible endpoint (http(s)://host/v1); DATA then needs reference images or code")
    ev.add_argument("--model-name", default=None, help="the served model's name (with an endpoint --model)")
    ev.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the endpoint's API key")
    ev.add_argument("--max-new-tokens", type=int, default=1024, help="generation length limit (with --model)")
    ev.add_argument("--log-samples", action="store_true",
                    help="keep each sample's prompt and whole completion in results.jsonl")
    ev.set_defaults(func=_eval_cmd)

    t = sub.add_parser("train", help="train: grpo (code-writing VLM), sft (warm start), flow (text-to-image GRPO)",
                       description="Train from a YAML config. Multi-GPU / multi-node: "
                                   "accelerate launch [--multi_gpu|--use_deepspeed|--use_fsdp] -m visalign train ...")
    t.add_argument("trainer", choices=sorted(TRAINERS))
    t.add_argument("config", nargs="?", help="YAML file with the trainer's options")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an option (repeatable)")
    t.add_argument("--describe", action="store_true", help="print the trainer's options and defaults")
    t.add_argument("--algorithm", choices=("grpo", "refl"), help="flow: grpo (Flow-GRPO, the default) or refl (ReFL / "
                   "DRaFT: back-propagate a differentiable reward; --mode refl|draft); also `algorithm:` in the config")
    t.add_argument("--mode", help="reward: 'bt' (Bradley-Terry reward model) or 'judge' (a generative VLM judge "
                   "trained with GRPO)")
    t.add_argument("--check-model", metavar="PATH", help="grpo: say whether PATH's VLM family is supported and which "
                   "processor path it takes (reads config and processor, no weights); exit 1 if not supported")
    t.set_defaults(func=_train_cmd)

    dt = sub.add_parser("data", help="write synthetic data as JSONL: charts (code + render) or preference pairs")
    dsub = dt.add_subparsers(dest="kind", required=True)
    from .data.pairs import add_pairs_parser

    add_pairs_parser(dsub)
    dt = dsub.add_parser("charts", help="chart-to-code rows: code + rendered image")
    dt.add_argument("n", type=int)
    dt.add_argument("out", help="JSONL path; images go to <stem>_images/ beside it")
    dt.add_argument("--seed", type=int, default=0)
    dt.add_argument("--kinds", help="comma-separated chart kinds (bar, line, scatter, pie, multi)")
    dt.add_argument("--exclude", action="append", help="a JSONL whose codes must not appear (held-out sets)")
    dt.add_argument("--workers", type=int, default=2)
    dt.set_defaults(func=_data_cmd)

    d = sub.add_parser("doctor", help="report backends, versions, sandbox level and what is missing")
    d.add_argument("--json", action="store_true")
    d.add_argument("--quick", action="store_true", help="skip the test render of each renderer")
    d.set_defaults(func=_doctor_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "timeout", 1.0) is not None and getattr(args, "timeout", 1.0) <= 0:
        parser.error("--timeout must be positive")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
