"""`disco-trl study`: the regimes where DisCO's design should show, measured on the demo task.

`disco-trl compare` (docs/comparison.md) found DisCO and the GRPO family indistinguishable on the balanced task mix
at a shared, small learning rate. The study measures the three places where the paper's mechanisms should matter,
with every method given the same sweep and the same compute:

1. **Imbalance** (the DRO term): a harder task mix (`--difficulties`, default 2-4 operations) on which the warm
   start's Pass@1 is low, so most informative groups have one or two positives out of eight. Reported: Pass@1,
   per-difficulty gains, and how the positives fall in the training groups (negatives per positive) over training,
   recorded identically for every method (`experiment.recording_reward`).
2. **Step size** (the trust region): held-out Pass@1 against the learning rate on `--lr-grid` (a log grid), every
   method, `--grid-seeds` seeds each; where a method falls below its start or its entropy collapses or explodes.
3. **Long runs**: `--long-steps` (default 4x `--steps`) at each method's best rate, seeds `--long-seeds`:
   entropy and Pass@1 over time.
4. **Statistics**: at each method's best rate, the `--steps` point of every seed (grid seeds, long-run seeds at
   their step-`--steps` evaluation, and `--extra-seeds`): mean, std, paired differences over shared seeds, and the
   smallest difference the design can detect.

Runs are shared between parts: the grid at the best rate is part of the statistics, the long runs' intermediate
evaluation at step `--steps` is their 160-step point. The best rate per method is the grid's best mean Pass@1 on the
*validation* questions; every reported Pass@1 is on the *test* questions. Each run is one file in `runs/`, reused
when the command is run again with the same settings, so an interrupted study resumes.

    nice -n 10 disco-trl study --output-dir docs/study
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time

from .. import options
from ..experiment import RunSettings, quiet_libraries
from ..methods import DEMO_METHODS, METHODS
from ..options import settings_from_args, warmstart_config
from ..runs import load_finished, run_cached, run_file, settings_dict
from ..warmstart import load_or_build
from .markdown import render as markdown
from .plots import plot_imbalance, plot_long_runs, plot_step_size
from .report import summarize


DEFAULT_LR_GRID = [1e-5, 3e-5, 1e-4, 3e-4]
DEFAULT_DIFFICULTIES = [2, 3, 4]


def difficulty(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 4:
        raise ValueError(f"difficulties are numbers of operations between 1 and 4, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings()
    parser = argparse.ArgumentParser(
        prog="disco-trl study",
        description="DisCO vs the GRPO family where the paper's mechanisms should matter: a hard task mix (sparse "
                    "positives), a learning-rate grid (step size), long runs, and enough seeds for statistics. "
                    "Writes results.md, results.json, stepsize.png, long_runs.png, imbalance.png and runs/.",
    )
    seeds = functools.partial(options.comma_list, options.seed)
    parser.add_argument("--methods", type=options.comma_list(options.method, "--methods"), default=list(DEMO_METHODS),
                        help=f"comma-separated names of disco_trl.demo.methods (default: {','.join(DEMO_METHODS)})")
    parser.add_argument("--lr-grid", type=options.comma_list(options.learning_rate, "--lr-grid"),
                        default=DEFAULT_LR_GRID,
                        help="learning rates every method is trained at (default 1e-5,3e-5,1e-4,3e-4)")
    parser.add_argument("--grid-seeds", type=seeds("--grid-seeds"), default=[0, 1],
                        help="seeds of the grid (every method x rate; default 0,1)")
    parser.add_argument("--long-seeds", type=seeds("--long-seeds"), default=[2],
                        help="seeds of the long runs at each method's best rate (default 2)")
    parser.add_argument("--extra-seeds", type=seeds("--extra-seeds"), default=[3, 4],
                        help="more --steps runs at each method's best rate, for the statistics (default 3,4)")
    parser.add_argument("--long-steps", type=options.positive_int("--long-steps"), default=None,
                        help="optimizer steps of the long runs (default 4x --steps)")
    parser.add_argument("--long-eval-every", type=options.positive_int("--long-eval-every"), default=None,
                        help="held-out evaluations of the long runs every N steps (default --steps / 2); must "
                             "divide --steps, so that the long runs have a --steps point")
    parser.add_argument("--difficulties", type=options.comma_list(difficulty, "--difficulties"),
                        default=DEFAULT_DIFFICULTIES,
                        help="numbers of operations of the training and held-out questions (default 2,3,4)")
    parser.add_argument("--output-dir", default="disco-study-output",
                        help="where results.md, results.json, the plots and runs/ go")
    parser.add_argument("--runs-dir", default=None, help="where the per-run files are kept (default OUTPUT_DIR/runs)")
    parser.add_argument("--partial", action="store_true",
                        help="run nothing: report the finished runs only (a study still running, or interrupted); "
                             "the best rates then come from the grid runs finished so far")
    options.add_common_arguments(parser, defaults)
    return parser


def check_plan(args, steps: int) -> tuple[int, int]:
    """The long runs' length and evaluation interval; one clear error for an inconsistent plan."""
    groups = {"--grid-seeds": args.grid_seeds, "--long-seeds": args.long_seeds, "--extra-seeds": args.extra_seeds}
    seen: dict[int, str] = {}
    for flag, seeds in groups.items():
        for seed in seeds:
            if seed in seen:
                raise ValueError(f"seed {seed} is in both {seen[seed]} and {flag}: each seed's --steps point must be "
                                 "counted once in the statistics; give the groups different seeds")
            seen[seed] = flag
    long_steps = args.long_steps or 4 * steps
    every = args.long_eval_every or max(1, steps // 2)
    if long_steps <= steps:
        raise ValueError(f"--long-steps={long_steps} must be larger than --steps={steps}")
    if steps % every:
        raise ValueError(f"--long-eval-every={every} must divide --steps={steps} (the long runs' step-{steps} "
                         "evaluation is their point in the statistics)")
    return long_steps, every


def study_settings(args, method: str, seed: int, lr: float, *, kind: str, long_steps: int = 0,
                   long_every: int = 0) -> RunSettings:
    """One run of the study: the hard mix for training and evaluation, test questions reported; grid runs are also
    scored on the validation questions (which choose the rate); long runs are longer and evaluated on the way."""
    settings = settings_from_args(args, method, seed, lr)
    settings.train_difficulties = tuple(args.difficulties)
    settings.eval_difficulties = tuple(args.difficulties)
    settings.eval_split = "test"
    if kind == "grid":
        settings.also_eval_split = "val"
    elif kind == "long":
        settings.max_steps, settings.eval_every = long_steps, long_every
    settings.validate()
    return settings


def best_rates(grid: dict[str, dict[float, list[dict]]]) -> dict[str, float]:
    """Per method, the rate with the best mean validation Pass@1 over the grid seeds (ties: the smaller rate)."""
    best = {}
    for method, per_lr in grid.items():
        means = {lr: sum(r["also_eval"]["pass@1_after"] for r in runs) / len(runs) for lr, runs in per_lr.items()}
        best[method] = max(means, key=lambda lr: (means[lr], -lr))
    return best


def _cpu_seconds_so_far() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def run_all(jobs: list[tuple[RunSettings, str]], model_path: str, runs_dir: str, partial: bool = False) -> list:
    """Every (settings, tag) run, in order; runs another process of the same command has claimed are collected at
    the end (so two processes on one runs folder split the work). With `partial`, nothing is run: the finished runs
    are loaded and the others are None."""
    if partial:
        return [load_finished(run_file(runs_dir, tag, s), settings_dict(s), model_path) for s, tag in jobs]
    results = [run_cached(s, model_path, runs_dir, tag, wait=False) for s, tag in jobs]
    return [r if r is not None else run_cached(s, model_path, runs_dir, tag) for r, (s, tag) in zip(results, jobs)]


def run_study(args, parser) -> dict:
    """Runs (or reuses) every run of the study, in an order that makes a partial study useful: the grid seed by seed,
    then the long runs, then the extra seeds. Returns the runs by part."""
    base = settings_from_args(args, args.methods[0], args.grid_seeds[0], args.lr_grid[0])
    long_steps, long_every = check_plan(args, base.max_steps)
    runs_dir = args.runs_dir or os.path.join(args.output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    quiet_libraries()
    _, _, info = load_or_build(warmstart_config(args.quick), cache_dir=args.cache_dir)
    model_path = info["path"]
    n = len(args.methods)
    n_short = n * (len(args.lr_grid) * len(args.grid_seeds) + len(args.extra_seeds))
    print(f"[study] {n} methods: grid {len(args.lr_grid)} rates x {len(args.grid_seeds)} seeds x {base.max_steps} "
          f"steps, then {len(args.long_seeds)} long run(s) of {long_steps} steps and {len(args.extra_seeds)} extra "
          f"seed(s) at each method's best rate: {n_short} runs of {base.max_steps} steps and "
          f"{n * len(args.long_seeds)} of {long_steps}", flush=True)

    grid: dict[str, dict[float, list[dict]]] = {m: {lr: [] for lr in args.lr_grid} for m in args.methods}
    keys = [(m, lr, seed) for seed in args.grid_seeds for m in args.methods for lr in args.lr_grid]
    done = run_all([(study_settings(args, m, seed, lr, kind="grid"), "grid") for m, lr, seed in keys], model_path,
                   runs_dir, args.partial)
    for (method, lr, _), run in zip(keys, done):
        if run is not None:
            grid[method][lr].append(run)
    grid = {m: {lr: runs for lr, runs in per.items() if runs} for m, per in grid.items()}
    grid = {m: per for m, per in grid.items() if per}
    best = best_rates(grid)
    print("[study] best rates (validation): " + ", ".join(f"{METHODS[m].label} {lr:g}" for m, lr in best.items()),
          flush=True)
    long_keys = [(m, seed) for seed in args.long_seeds for m in args.methods]
    extra_keys = [(m, seed) for seed in args.extra_seeds for m in args.methods]
    long_keys = [(m, seed) for m, seed in long_keys if m in best]
    extra_keys = [(m, seed) for m, seed in extra_keys if m in best]
    jobs = [(study_settings(args, m, seed, best[m], kind="long", long_steps=long_steps, long_every=long_every), "long")
            for m, seed in long_keys]
    jobs += [(study_settings(args, m, seed, best[m], kind="extra"), "extra") for m, seed in extra_keys]
    done = run_all(jobs, model_path, runs_dir, args.partial)
    long_runs, extra = {m: [] for m in best}, {m: [] for m in best}
    for (method, _), run in zip(long_keys, done[: len(long_keys)]):
        if run is not None:
            long_runs[method].append(run)
    for (method, _), run in zip(extra_keys, done[len(long_keys):]):
        if run is not None:
            extra[method].append(run)
    return {"grid": grid, "best": best, "long": long_runs, "extra": extra, "steps": base.max_steps,
            "long_steps": long_steps, "long_every": long_every, "warmstart": info, "probe": base}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base = settings_from_args(args, args.methods[0], args.grid_seeds[0], args.lr_grid[0])
        check_plan(args, base.max_steps)
        base.train_difficulties = base.eval_difficulties = tuple(args.difficulties)
        base.validate()
    except ValueError as err:
        parser.error(str(err))
    options.make_output_dir(parser, args.output_dir)
    t0, cpu0 = time.time(), _cpu_seconds_so_far()
    parts = run_study(args, parser)

    command = "disco-trl study " + " ".join(argv if argv is not None else sys.argv[1:])
    timing = {"this_invocation_wall_seconds": round(time.time() - t0, 1),
              "this_invocation_cpu_seconds": round(_cpu_seconds_so_far() - cpu0, 1)}
    results = summarize(parts, args, command.strip(), timing)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(results))
    plot_step_size(results, os.path.join(args.output_dir, "stepsize.png"))
    plot_long_runs(parts, results, os.path.join(args.output_dir, "long_runs.png"))
    plot_imbalance(parts, results, os.path.join(args.output_dir, "imbalance.png"))
    print()
    print(markdown(results))
    print(f"[study] wrote {args.output_dir}/results.md, results.json, stepsize.png, long_runs.png, imbalance.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
