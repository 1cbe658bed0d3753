"""`disco-trl compare`: the paper's comparison in miniature, on the demo task.

Same task, starting model (the shipped start, `shipped.py`), seeds, geometry, sampling and step budget for every
method: DisCO (log-L and L-ratio), DisCO-b, and TRL's own GRPO, Dr. GRPO and DAPO losses (see
`disco_trl.demo.methods`). Writes, in `--output-dir`:

* `results.md` and `results.json`: held-out Pass@1 (mean, std, min-max over seeds) per method, per difficulty,
  final entropy and training reward, plus the learning-rate sweep when one was run;
* `dynamics.png`: every method's training reward, entropy and held-out Pass@1 against step;
* `runs/*.json`: one file per run (metrics per step), reused when the command is run again with the same settings,
  so an interrupted comparison resumes where it stopped;
* with `--baseline METHOD`: in results.md/json, every other method against it paired by seed at equal optimizer
  steps, training time and completions generated, and what each spent (`disco_trl.demo.efficiency`); and
  `efficiency.png`, held-out Pass@1 against those three axes (evaluations every `--eval-every` steps).

Learning rate, the same protocol for every method: either one `--learning-rate` for all, or `--lr-sweep a,b,c`:
each method is trained at each rate with `--sweep-seed` and scored on the *validation* half of the held-out pool;
its best rate is then used for the `--seeds` runs, which are scored on the *test* half (the reported numbers).

    disco-trl compare --lr-sweep 3e-5,1e-4,3e-4 --seeds 0,1,2 --output-dir docs/comparison

Filling the batches with informative questions against plain DisCO and skipping (docs/comparison.md):

    disco-trl compare --methods disco,disco-skip,disco-fill --baseline disco --seeds 0,1,2,3,4 --eval-every 20 \
        --output-dir docs/comparison/fill
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from . import efficiency, options
from .experiment import RunSettings, quiet_libraries
from .methods import DEMO_METHODS, METHODS
from .plots import plot_comparison, start_end
from .runs import run_cached


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings()
    parser = argparse.ArgumentParser(
        prog="disco-trl compare",
        description="DisCO, DisCO-b and TRL's GRPO, Dr. GRPO and DAPO on the demo task: same model, seeds and "
                    "budget; writes results.md, results.json and dynamics.png.",
    )
    parser.add_argument("--methods", type=options.comma_list(options.method, "--methods"), default=list(DEMO_METHODS),
                        help=f"comma-separated names of disco_trl.demo.methods (default: {','.join(DEMO_METHODS)}; "
                             f"also: {','.join(m for m in METHODS if m not in DEMO_METHODS)})")
    parser.add_argument("--seeds", type=options.comma_list(options.seed, "--seeds"), default=[0, 1, 2],
                        help="comma-separated seeds for the reported runs (default 0,1,2)")
    lr = parser.add_mutually_exclusive_group()
    lr.add_argument("--learning-rate", type=options.learning_rate, default=None,
                    help=f"one constant learning rate for every method (default {defaults.learning_rate:g})")
    lr.add_argument("--lr-sweep", type=options.comma_list(options.learning_rate, "--lr-sweep"), default=None,
                    help="learning rates to try for every method (on --sweep-seed, scored on validation questions); "
                         "each method's best is used for the reported runs")
    parser.add_argument("--sweep-seed", type=options.seed, default=100, help="seed of the sweep runs (default 100)")
    parser.add_argument("--output-dir", default="disco-compare-output",
                        help="where results.md, results.json, dynamics.png and runs/ go")
    parser.add_argument("--baseline", type=options.method, default=None,
                        help="one of --methods: compare every other method with it, paired by seed, at equal "
                             "optimizer steps, training time and completions generated (needs --eval-every for the "
                             "last two); adds efficiency.png")
    parser.add_argument("--runs-dir", default=None,
                        help="where the per-run files are kept and reused (default: OUTPUT_DIR/runs); point several "
                             "comparisons at one folder to share the runs they have in common")
    options.add_common_arguments(parser, defaults)
    return parser


def _final(log_history: list[dict], key: str, fraction: float = 0.1) -> float | None:
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
            "label": METHODS[method].label,
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
    for s in summary.values():
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
            best = best_rate(per)
            cells = [("**%.3f**" if lr == best else "%.3f") % per[lr] if lr in per else "" for lr in lrs]
            lines.append(f"| {METHODS[method].label} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def best_rate(per_lr: dict[float, float]) -> float:
    """The rate with the best validation Pass@1 (ties: the smaller rate)."""
    return max(per_lr, key=lambda lr: (per_lr[lr], -lr))


def sweep_learning_rates(args, model_path: str, runs_dir: str) -> dict[str, dict[float, float]]:
    """Every method at every rate of `--lr-sweep`, on `--sweep-seed`, scored on the validation questions."""
    sweep: dict[str, dict[float, float]] = {m: {} for m in args.methods}
    for method in args.methods:
        for lr in args.lr_sweep:
            settings = options.settings_from_args(args, method, args.sweep_seed, lr)
            settings.eval_split = "val"
            settings.eval_every = 0
            sweep[method][lr] = run_cached(settings, model_path, runs_dir, "sweep")["pass@1_after"]
        print(f"[compare] {METHODS[method].label}: best learning rate {best_rate(sweep[method]):g}", flush=True)
    return sweep


def comparison_meta(args, argv, probe: RunSettings, summary: dict, start: dict, t0: float) -> dict:
    command = "disco-trl compare " + " ".join(argv if argv is not None else sys.argv[1:])
    return {
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
        "start": start,
        "wall_seconds": round(time.time() - t0, 1),
    }


def write_results(args, runs_by_method: dict[str, list[dict]], summary: dict, sweep: dict | None, meta: dict,
                  probe: RunSettings) -> str:
    """results.json and results.md (with `--baseline`: the paired comparison at equal budgets and efficiency.png);
    returns the Markdown."""
    text, paired = markdown(summary, sweep, meta), None
    if args.baseline:
        paired = {"baseline": args.baseline, "paired": efficiency.paired_at_budgets(runs_by_method, args.baseline),
                  "cost": efficiency.cost(runs_by_method)}
        labels = {m: METHODS[m].label for m in args.methods}
        text += "\n".join(efficiency.markdown(paired["paired"], paired["cost"], labels, args.baseline)) + "\n"
        efficiency.plot_efficiency(runs_by_method, labels, os.path.join(args.output_dir, "efficiency.png"),
                                   f"Demo task, {probe.max_steps} steps, mean over seeds {args.seeds}")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "against_baseline": paired,
                   "sweep": {m: {f"{lr:g}": v for lr, v in per.items()} for m, per in (sweep or {}).items()}},
                  f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.baseline is not None and args.baseline not in args.methods:
        parser.error(f"--baseline {args.baseline} is not one of --methods {','.join(args.methods)}")
    base_lr = args.learning_rate if args.learning_rate is not None else RunSettings().learning_rate
    try:
        probe = options.settings_from_args(args, args.methods[0], args.seeds[0], base_lr)
    except ValueError as err:
        parser.error(str(err))
    runs_dir = args.runs_dir or os.path.join(args.output_dir, "runs")
    options.make_output_dir(parser, args.output_dir)
    options.make_output_dir(parser, runs_dir, "--runs-dir")

    model_path, start = options.start_model(parser, args)
    quiet_libraries()
    t0 = time.time()
    n_sweep = len(args.methods) * len(args.lr_sweep or [])
    print(f"[compare] {len(args.methods)} methods x {len(args.seeds)} seeds, {probe.max_steps} steps each"
          + (f", after a sweep of {n_sweep} runs" if n_sweep else ""), flush=True)
    sweep = sweep_learning_rates(args, model_path, runs_dir) if args.lr_sweep else None
    lr_by_method = {m: best_rate(sweep[m]) if sweep else base_lr for m in args.methods}
    runs_by_method: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # seed-major: a partial comparison still covers every method
        for method in args.methods:
            settings = options.settings_from_args(args, method, seed, lr_by_method[method])
            runs_by_method[method].append(run_cached(settings, model_path, runs_dir, "final"))

    summary = summarize(runs_by_method, lr_by_method)
    meta = comparison_meta(args, argv, probe, summary, start, t0)
    text = write_results(args, runs_by_method, summary, sweep, meta, probe)
    plot_comparison(runs_by_method, {m: f"{METHODS[m].label} (lr {lr_by_method[m]:g})" for m in args.methods},
                    os.path.join(args.output_dir, "dynamics.png"),
                    f"Demo task, {probe.max_steps} steps, mean over seeds {args.seeds} (band: min-max)")
    print()
    print(text)
    print(f"[compare] wrote {args.output_dir}/results.md, results.json, dynamics.png in {meta['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
