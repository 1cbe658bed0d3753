"""`disco-trl compare`: the paper's comparison in miniature, on the demo task.

Same task, warm-started model, seeds, geometry, sampling and step budget for every method: DisCO (log-L and
L-ratio), DisCO-b, and TRL's own GRPO, Dr. GRPO and DAPO losses (see `disco_trl.demo.experiment`). Writes, in
`--output-dir`:

* `results.md` and `results.json`: held-out Pass@1 (mean, std, min-max over seeds) per method, per difficulty,
  final entropy and training reward, plus the learning-rate sweep when one was run;
* `dynamics.png`: every method's training reward, entropy and held-out Pass@1 against step;
* `runs/*.json`: one file per run (metrics per step), reused when the command is run again with the same settings,
  so an interrupted comparison resumes where it stopped.

Learning rate, the same protocol for every method: either one `--learning-rate` for all, or `--lr-sweep a,b,c`:
each method is trained at each rate with `--sweep-seed` and scored on the *validation* half of the held-out pool;
its best rate is then used for the `--seeds` runs, which are scored on the *test* half (the reported numbers).

    disco-trl compare --lr-sweep 3e-5,1e-4,3e-4 --seeds 0,1,2 --output-dir docs/comparison
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict

from .experiment import METHODS, RunSettings
from .run import QUICK, add_common_arguments, settings_from_args, warmstart_config

KEEP_KEYS = ("step", "reward", "reward_std", "entropy", "disco/kl", "kl", "disco/hinge_active", "disco/objective",
             "disco/frac_mixed_questions", "disco/neg_per_pos_mixed", "disco/frac_more_neg_than_pos",
             "frac_reward_zero_std", "completions/mean_length", "clip_ratio/region_mean", "clip_ratio/high_mean",
             "clip_ratio/low_mean", "loss", "grad_norm")


def _list(parse, name):
    def parse_list(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{name} needs at least one value")
        values = []
        for item in items:
            try:
                values.append(parse(item))
            except (ValueError, argparse.ArgumentTypeError) as err:
                raise argparse.ArgumentTypeError(f"{name}: {err}") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{name} lists a value twice: {text!r}")
        return values

    return parse_list


def _method(text):
    if text not in METHODS:
        raise ValueError(f"unknown method {text!r}; choose from {', '.join(METHODS)}")
    return text


def _seed(text):
    value = int(text)
    if value < 0:
        raise ValueError(f"seeds must be >= 0, got {value}")
    return value


def _lr(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"learning rates must be finite numbers > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings()
    parser = argparse.ArgumentParser(
        prog="disco-trl compare",
        description="DisCO, DisCO-b and TRL's GRPO, Dr. GRPO and DAPO on the demo task: same model, seeds and "
                    "budget; writes results.md, results.json and dynamics.png.",
    )
    parser.add_argument("--methods", type=_list(_method, "--methods"), default=list(METHODS),
                        help=f"comma-separated methods (default: all of {','.join(METHODS)})")
    parser.add_argument("--seeds", type=_list(_seed, "--seeds"), default=[0, 1, 2],
                        help="comma-separated seeds for the reported runs (default 0,1,2)")
    lr = parser.add_mutually_exclusive_group()
    lr.add_argument("--learning-rate", type=_lr, default=None,
                    help=f"one constant learning rate for every method (default {defaults.learning_rate:g})")
    lr.add_argument("--lr-sweep", type=_list(_lr, "--lr-sweep"), default=None,
                    help="learning rates to try for every method (on --sweep-seed, scored on validation questions); "
                         "each method's best is used for the reported runs")
    parser.add_argument("--sweep-seed", type=_seed, default=100, help="seed of the sweep runs (default 100)")
    parser.add_argument("--output-dir", default="disco-compare-output",
                        help="where results.md, results.json, dynamics.png and runs/ go")
    parser.add_argument("--runs-dir", default=None,
                        help="where the per-run files are kept and reused (default: OUTPUT_DIR/runs); point several "
                             "comparisons at one folder to share the runs they have in common")
    add_common_arguments(parser, defaults)
    return parser


def _slim(result: dict) -> dict:
    """What a run file keeps: the summary and the per-step metrics used by the table and the plot."""
    return {
        "method": result["method"],
        "settings": result["settings"],
        "pass@1_before": result["pass@1_before"],
        "pass@1_after": result["pass@1_after"],
        "pass@1_by_ops_before": {str(k): v for k, v in result["before"]["pass@1_by_ops"].items()},
        "pass@1_by_ops_after": {str(k): v for k, v in result["after"]["pass@1_by_ops"].items()},
        "eval_history": result["eval_history"],
        "group_history": result.get("group_history", []),
        "also_eval": None if not result.get("also_eval") else {
            "split": result["also_eval"]["split"],
            "pass@1_before": result["also_eval"]["before"]["pass@1"],
            "pass@1_after": result["also_eval"]["after"]["pass@1"],
        },
        "log_history": [{k: e[k] for k in KEEP_KEYS if k in e} for e in result["log_history"]
                        if "train_runtime" not in e],
        "train_seconds": result["train_seconds"],
        "total_seconds": result["total_seconds"],
        "cpu_seconds": result.get("cpu_seconds"),
    }


def same_settings(cached: dict | None, wanted: dict) -> bool:
    """Whether a run file's settings are `wanted`. A field added to RunSettings after the file was written counts
    as equal when `wanted` has its default (so older runs stay reusable)."""
    if not isinstance(cached, dict):
        return False
    defaults = json.loads(json.dumps(asdict(RunSettings())))
    return all(cached.get(k, defaults[k]) == v for k, v in wanted.items()) and set(cached) <= set(wanted)


def _load_finished(path: str, wanted: dict, model_path: str) -> dict | None:
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if same_settings(cached.get("settings"), wanted) and cached.get("model_path_key") == os.path.basename(model_path):
            return cached
    return None


def _claim(lock: str) -> bool:
    """Take the run's lock file (another process running the same command does the run otherwise). A lock whose
    process is gone is stale and taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock) as f:
                    os.kill(int(f.read().strip() or 0), 0)
                return False  # alive: someone else is on it
            except (ProcessLookupError, ValueError, FileNotFoundError):
                try:
                    os.remove(lock)  # stale
                except FileNotFoundError:
                    pass
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def run_cached(settings: RunSettings, model_path: str, runs_dir: str, tag: str, log=print,
               wait: bool = True) -> dict | None:
    """Run one (method, lr, seed), or load it from `runs_dir` when a run with identical settings is there.

    Several processes may run the same command on one `runs_dir` to share the work: a run another live process has
    claimed (its `.lock` file) is waited for, or, with `wait=False`, skipped (returns None) to be collected later."""
    from .experiment import run_method

    name = f"{tag}-{settings.method}-lr{settings.learning_rate:g}-seed{settings.seed}.json"
    path = os.path.join(runs_dir, name)
    wanted = json.loads(json.dumps(asdict(settings)))
    while True:
        cached = _load_finished(path, wanted, model_path)
        if cached is not None:
            log(f"[compare] {name}: reusing the finished run")
            return cached
        if _claim(path + ".lock"):
            break
        if not wait:
            return None
        time.sleep(5)
    try:
        cached = _load_finished(path, wanted, model_path)  # finished between the check and the claim
        if cached is not None:
            return cached
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="disco-compare-") as trainer_dir:  # the trainer's output_dir (unused)
            result = _slim(run_method(settings, model_path, trainer_dir, log=lambda *a: None, save_model=False))
        result["settings"] = wanted
        result["model_path_key"] = os.path.basename(model_path)
        with open(path + f".tmp{os.getpid()}", "w") as f:
            json.dump(result, f)
        os.replace(path + f".tmp{os.getpid()}", path)
    finally:
        os.remove(path + ".lock")
    log(f"[compare] {tag} {settings.method:<13} lr {settings.learning_rate:<8g} seed {settings.seed}: Pass@1 "
        f"{result['pass@1_before']:.3f} -> {result['pass@1_after']:.3f}  ({time.time() - t0:.0f}s)")
    return result


def _final(log_history: list[dict], key: str, fraction: float = 0.1) -> float | None:
    from .run import start_end

    return start_end(log_history, key, fraction)[1]


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def summarize(runs_by_method: dict[str, list[dict]], lr_by_method: dict[str, float]) -> dict:
    summary = {}
    for method, runs in runs_by_method.items():
        after = [r["pass@1_after"] for r in runs]
        best = [max(h["pass@1"] for h in r["eval_history"]) for r in runs]
        by_ops = {}
        for k in runs[0]["pass@1_by_ops_after"]:
            by_ops[k] = statistics.fmean(r["pass@1_by_ops_after"][k] for r in runs)
        entropy = [v for v in (_final(r["log_history"], "entropy") for r in runs) if v is not None]
        reward = [v for v in (_final(r["log_history"], "reward") for r in runs) if v is not None]
        summary[method] = {
            "label": METHODS[method],
            "learning_rate": lr_by_method[method],
            "seeds": [r["settings"]["seed"] for r in runs],
            "pass@1_before": statistics.fmean(r["pass@1_before"] for r in runs),
            "pass@1_after": _stats(after),
            "pass@1_best_during_training": _stats(best),
            "pass@1_by_ops_after": by_ops,
            "final_entropy": statistics.fmean(entropy) if entropy else None,
            "final_train_reward": statistics.fmean(reward) if reward else None,
            "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
        }
    return summary


def markdown(summary: dict, sweep: dict | None, meta: dict) -> str:
    lines = [
        "# DisCO vs GRPO-family losses on the demo task",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Held-out test Pass@1 ({meta['eval_questions']} questions x {meta['eval_samples']} samples, T="
        f"{meta['temperature']}) after {meta['steps']} optimizer steps; mean ± std over seeds {meta['seeds']} "
        f"(min-max in brackets). Starting model Pass@1: {meta['pass@1_start']:.3f}. DisCO: tau "
        f"{meta['disco']['tau']}, delta {meta['disco']['kl_delta']:g}, beta {meta['disco']['kl_beta']:g}.",
        "",
        "| method | lr | Pass@1 after | [min, max] | best during training | 1 op | 2 ops | 3 ops | 4 ops | "
        "final entropy | final train reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        a, b = s["pass@1_after"], s["pass@1_best_during_training"]
        ops = s["pass@1_by_ops_after"]
        ops_cells = " | ".join(f"{ops[k]:.3f}" if k in ops else "" for k in ("1", "2", "3", "4"))
        ent = "n/a" if s["final_entropy"] is None else f"{s['final_entropy']:.3f}"
        rew = "n/a" if s["final_train_reward"] is None else f"{s['final_train_reward']:.3f}"
        lines.append(
            f"| {s['label']} | {s['learning_rate']:g} | {a['mean']:.3f} ± {a['std']:.3f} | "
            f"[{a['min']:.3f}, {a['max']:.3f}] | {b['mean']:.3f} | {ops_cells} | {ent} | {rew} |"
        )
    lines += ["", "Final entropy and training reward: mean over the last 10% of logged steps, averaged over seeds. "
              "\"Best during training\": the best of the held-out evaluations made during training (the paper "
              "reports the best checkpoint); the main column is the final model."]
    if sweep:
        lrs = sorted({lr for per in sweep.values() for lr in per})
        lines += ["", f"## Learning-rate sweep (seed {meta['sweep_seed']}, validation questions, Pass@1 after "
                      "training; the best rate per method, in bold, is used above)", "",
                  "| method | " + " | ".join(f"{lr:g}" for lr in lrs) + " |",
                  "|---|" + "---|" * len(lrs)]
        for method, per in sweep.items():
            best = max(per, key=lambda lr: (per[lr], -lr))
            cells = [("**%.3f**" if lr == best else "%.3f") % per[lr] if lr in per else "" for lr in lrs]
            lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    base_lr = args.learning_rate if args.learning_rate is not None else RunSettings().learning_rate
    try:
        probe = settings_from_args(args, args.methods[0], args.seeds[0], base_lr)
    except ValueError as err:
        parser.error(str(err))
    runs_dir = args.runs_dir or os.path.join(args.output_dir, "runs")
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        os.makedirs(runs_dir, exist_ok=True)
    except OSError as err:
        parser.error(f"--output-dir {args.output_dir!r} cannot be created: {err}")

    from .experiment import quiet_libraries
    from .plots import plot_comparison
    from .warmstart import load_or_build

    quiet_libraries()
    t0 = time.time()
    _, _, info = load_or_build(warmstart_config(args.quick), cache_dir=args.cache_dir)
    model_path = info["path"]
    n_sweep = len(args.methods) * len(args.lr_sweep or [])
    print(f"[compare] {len(args.methods)} methods x {len(args.seeds)} seeds, {probe.max_steps} steps each"
          + (f", after a sweep of {n_sweep} runs" if n_sweep else ""), flush=True)

    sweep: dict[str, dict[float, float]] | None = None
    lr_by_method = {m: base_lr for m in args.methods}
    if args.lr_sweep:
        sweep = {m: {} for m in args.methods}
        for method in args.methods:
            for lr in args.lr_sweep:
                settings = settings_from_args(args, method, args.sweep_seed, lr)
                settings.eval_split = "val"
                settings.eval_every = 0
                result = run_cached(settings, model_path, runs_dir, "sweep")
                sweep[method][lr] = result["pass@1_after"]
            per = sweep[method]
            lr_by_method[method] = max(per, key=lambda lr: (per[lr], -lr))  # ties: the smaller rate
            print(f"[compare] {METHODS[method]}: best learning rate {lr_by_method[method]:g}", flush=True)

    runs_by_method: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed-major: a partial comparison still covers every method
        for method in args.methods:
            settings = settings_from_args(args, method, seed, lr_by_method[method])
            runs_by_method.setdefault(method, []).append(run_cached(settings, model_path, runs_dir, "final"))

    summary = summarize(runs_by_method, lr_by_method)
    command = "disco-trl compare " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {
        "command": command.strip(),
        "steps": probe.max_steps,
        "seeds": args.seeds,
        "sweep_seed": args.sweep_seed,
        "temperature": probe.temperature,
        "eval_questions": probe.eval_questions,
        "eval_samples": probe.eval_samples,
        "questions_per_generation": probe.questions_per_generation,
        "num_generations": probe.num_generations,
        "updates_per_generation": probe.updates_per_generation,
        "disco": {"tau": probe.tau if probe.tau is not None else "paper default (10 log-L, 1 L-ratio)",
                  "kl_delta": probe.kl_delta, "kl_beta": probe.kl_beta},
        "pass@1_start": statistics.fmean(s["pass@1_before"] for s in summary.values()),
        "warmstart": {k: info[k] for k in ("config", "num_parameters", "vocab_size", "sft_final_loss")},
        "wall_seconds": round(time.time() - t0, 1),
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary,
                   "sweep": {m: {f"{lr:g}": v for lr, v in per.items()} for m, per in (sweep or {}).items()}},
                  f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(summary, sweep, meta))
    plot_comparison(runs_by_method, {m: f"{METHODS[m]} (lr {lr_by_method[m]:g})" for m in args.methods},
                    os.path.join(args.output_dir, "dynamics.png"),
                    f"Demo task, {probe.max_steps} steps, mean over seeds {args.seeds} (band: min-max)")
    print()
    print(markdown(summary, sweep, meta))
    print(f"[compare] wrote {args.output_dir}/results.md, results.json, dynamics.png in {meta['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
