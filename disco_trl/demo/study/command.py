"""`disco-trl study`: the pre-registered experiments of docs/study.md, on the demo task.

    disco-trl study --experiment dro --output-dir docs/study            # A. DRO: tau 10 ... 0.03 vs DisCO-b
    disco-trl study --experiment trust-region --output-dir docs/study   # B. hinge / none / fixed KL at 3e-5, 1e-4
    disco-trl study --experiment long --output-dir docs/study           # C. long runs on a repeating pool
    disco-trl study --experiment dro-powered --output-dir docs/study    # E (v3). tau 0.03 vs DisCO-b, 32 seeds
    disco-trl study --experiment all --output-dir docs/study            # all four (D, the statistics, is in each)
    disco-trl study --experiment dro-powered --measure-groups           # E's groups at the start, before any run
    disco-trl study --experiment all --plan                             # the runs and their estimated cost
    disco-trl study --experiment all --probe-cost --output-dir /tmp/p   # time short runs of each kind, extrapolate
    disco-trl study --check-run dro:tau0.1:0 --output-dir /tmp/p         # time one full-length run of the design

The design is `plan.py`; the numbers are `report.py` (statistics in `stats.py`), the tables `markdown.py`, the
figures `plots.py`. Every run is one file in the runs folder (default OUTPUT_DIR/runs), reused when the command runs
again with the same settings, so an interrupted study resumes; several processes running the command on one folder
share the work through per-run lock files. The warm start's evaluation of each seed is kept there too (`starts/`).
Each experiment writes OUTPUT_DIR/<experiment>/results.json, results.md and its figures; OUTPUT_DIR/results.md
lists the verdicts of the experiments reported so far.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict

from .. import options
from ..experiment import quiet_libraries
from ..runs import load_finished, run_cached, run_file, settings_dict, start_record
from . import plan
from .cost import check_runs, estimate_cost, probe_cost
from .groups import describe, measure_groups
from .markdown import render, write_index
from .plots import plot_experiment
from .report import summarize


QUICK_SCALE = plan.Scale(steps=8, long_steps=16, long_eval_every=8, calibration_steps=8, seeds=(0, 1),
                         long_seeds=(0, 1), eval_questions=8, eval_samples=2, questions_per_generation=8,
                         updates_per_generation=8, train_pool=16, calibration_eval_questions=2, powered_steps=8,
                         powered_seeds=(0, 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disco-trl study",
        description="The pre-registered study of docs/study.md: A. DRO (tau), B. the trust region (hinge, none, "
                    "fixed KL), C. long runs on a repeating pool (study v2); E. DRO powered to detect half a point "
                    "under heavy imbalance (study v3); each with paired statistics over seeds.")
    add = parser.add_argument
    add("--experiment", type=experiments_arg, default=list(plan.EXPERIMENTS),
        help="dro, trust-region, long, dro-powered, a comma list of them, or all (default all)")
    add("--output-dir", default="disco-study-output", help="where each experiment's folder and runs/ go")
    add("--runs-dir", default=None, help="where the per-run files are kept (default OUTPUT_DIR/runs)")
    add("--partial", action="store_true", help="run nothing: report the finished runs only")
    add("--plan", action="store_true", help="print the runs and their estimated CPU cost; run nothing")
    add("--probe-cost", action="store_true",
        help="time short runs of each kind (in OUTPUT_DIR/probe-runs) and print the extrapolated cost")
    add("--check-run", action="append", type=check_run_arg, default=[], metavar="EXPERIMENT:ARM:SEED",
        help="run one full-length run of the design in OUTPUT_DIR/probe-runs and print its CPU time against the "
             "estimate and what it saw (repeatable; e.g. dro:tau0.1:0; EXPERIMENT:ARM:SEED:RATE:STEPS probes the arm "
             "at another rate and length)")
    options.add_start_model_argument(parser)
    add("--quick", action="store_true", help="a tiny scale (tests, smoke runs)")
    scale = plan.Scale()
    positive = options.positive_int
    add("--steps", type=positive("--steps"), help=f"A and B: steps per run (default {scale.steps})")
    add("--long-steps", type=positive("--long-steps"), help=f"C: steps per run (default {scale.long_steps})")
    add("--long-eval-every", type=positive("--long-eval-every"),
        help=f"C: evaluate every N steps (default {scale.long_eval_every})")
    add("--calibration-steps", type=positive("--calibration-steps"),
        help=f"steps of the delta calibration run (default {scale.calibration_steps})")
    seeds = functools.partial(options.comma_list, options.seed)
    add("--seeds", type=seeds("--seeds"), help=f"A and B (default {','.join(map(str, scale.seeds))})")
    add("--long-seeds", type=seeds("--long-seeds"), help=f"C (default {','.join(map(str, scale.long_seeds))})")
    add("--eval-questions", type=positive("--eval-questions"), help=f"default {scale.eval_questions}, at most 100")
    add("--eval-samples", type=positive("--eval-samples"), help=f"default {scale.eval_samples}")
    add("--train-pool", type=positive("--train-pool"), help=f"C: training questions (default {scale.train_pool})")
    add("--powered-steps", type=positive("--powered-steps"), help=f"E: steps per run (default {scale.powered_steps})")
    add("--powered-seeds", type=seeds("--powered-seeds"),
        help=f"E (default 0-{max(scale.powered_seeds)}: {len(scale.powered_seeds)} seeds)")
    add("--measure-groups", action="store_true",
        help="sample 4 generation batches' worth of the selected experiments' training questions for each of seeds "
             "0-7 from the start, as the trainers sample, and print how their groups fall (mixed, negatives per "
             "positive, mixed groups with >= 2 negatives); nothing is trained")
    return parser


def experiments_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(plan.EXPERIMENTS)
    unknown = [n for n in names if n not in plan.EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--experiment: {unknown or text!r} unknown; choose from "
                                         f"{', '.join(plan.EXPERIMENTS)} or all")
    return names


def check_run_arg(text: str) -> str:
    parts = text.split(":")
    if not 3 <= len(parts) <= 5 or parts[0] not in plan.EXPERIMENTS or not parts[2].isdigit():
        raise argparse.ArgumentTypeError(f"--check-run wants EXPERIMENT:ARM:SEED[:RATE[:STEPS]], e.g. dro:tau0.1:0; "
                                         f"got {text!r}")
    try:
        if len(parts) > 3:
            options.learning_rate(parts[3])
        if len(parts) > 4 and int(parts[4]) < 1:
            raise ValueError(f"steps must be >= 1, got {parts[4]}")
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--check-run {text!r}: {err}") from None
    arms = [a.name for a in plan.experiment(parts[0], plan.Scale()).arms]
    if parts[1] not in arms:
        raise argparse.ArgumentTypeError(f"--check-run: {parts[0]} has arms {', '.join(arms)}; got {parts[1]!r}")
    return text


def scale_from_args(args) -> plan.Scale:
    """The design's sizes, `--quick`'s tiny ones, then the flags given; a ValueError for an inconsistent plan."""
    scale = QUICK_SCALE if args.quick else plan.Scale()
    flags = {"steps": args.steps, "long_steps": args.long_steps, "long_eval_every": args.long_eval_every,
             "calibration_steps": args.calibration_steps, "seeds": args.seeds and tuple(args.seeds),
             "long_seeds": args.long_seeds and tuple(args.long_seeds), "eval_questions": args.eval_questions,
             "eval_samples": args.eval_samples, "train_pool": args.train_pool, "powered_steps": args.powered_steps,
             "powered_seeds": args.powered_seeds and tuple(args.powered_seeds)}
    scale = plan.scaled(scale, **{k: v for k, v in flags.items() if v is not None})
    if scale.eval_questions > 100:
        raise ValueError(f"--eval-questions={scale.eval_questions}: at most 100 held-out questions are reserved")
    if scale.long_steps % scale.long_eval_every:
        raise ValueError(f"--long-eval-every={scale.long_eval_every} must divide --long-steps={scale.long_steps}")
    for name in plan.EXPERIMENTS:  # every run's settings validate (pool size, geometry) before any work
        plan.jobs(plan.experiment(name, scale), scale, delta=1e-5)
        plan.calibration_job(plan.experiment(name, scale), scale)
    return scale


def run_all(jobs: list, model_path: str, runs_dir: str, partial: bool) -> list:
    """Every (settings, tag) run, in order; runs another process has claimed are waited for at the end (so processes
    on one runs folder split the work). With `partial`, nothing runs: unfinished runs are None."""
    if partial:
        return [load_finished(run_file(runs_dir, tag, s), settings_dict(s), model_path) for s, tag in jobs]
    results = [run_cached(s, model_path, runs_dir, tag, wait=False) for s, tag in jobs]
    return [r if r is not None else run_cached(s, model_path, runs_dir, tag) for r, (s, tag) in zip(results, jobs)]


def run_study(names: list[str], scale: plan.Scale, model_path: str, runs_dir: str, partial: bool) -> dict:
    """The calibration runs (one per mix of questions) and the runs that do not depend on delta first (a second
    process works on those while the first calibrates), then the rest. Returns, per experiment, {"calibration": its
    delta record or None, "runs": {arm: [run or None per seed]}, "starts": its seeds' start evaluation records}."""
    exps = [plan.experiment(n, scale) for n in names]
    calibrations = list({tag: (s, tag) for s, tag in (plan.calibration_job(e, scale) for e in exps)}.values())
    free = [j for e in exps for j in plan.jobs(e, scale, None, with_delta=False)]
    runs = {run_file(runs_dir, t, s): r
            for (s, t), r in zip(calibrations + free, run_all(calibrations + free, model_path, runs_dir, partial))}
    deltas = {}
    for settings, tag in calibrations:
        run = runs[run_file(runs_dir, tag, settings)]
        deltas[tag] = plan.delta_from_run(run) if run is not None else None
        if run is None:
            print(f"[study] the calibration run {tag} has not finished: runs that need its delta are left out",
                  flush=True)
    delta_of = {e.name: deltas[plan.calibration_job(e, scale)[1]] for e in exps}
    dependent = [j for e in exps if delta_of[e.name]
                 for j in plan.jobs(e, scale, delta_of[e.name]["delta"], with_delta=True)]
    runs.update(zip((run_file(runs_dir, t, s) for s, t in dependent),
                    run_all(dependent, model_path, runs_dir, partial)))
    return {e.name: _experiment_runs(e, scale, delta_of[e.name], runs, model_path, runs_dir) for e in exps}


def _experiment_runs(exp, scale, delta, runs: dict, model_path: str, runs_dir: str) -> dict:
    settings = {arm.name: _arm_settings(exp, arm, scale, delta) for arm in exp.arms}
    by_arm = {name: [runs.get(run_file(runs_dir, f"{exp.name}-{name}", s)) for s in arm_runs]
              for name, arm_runs in settings.items()}
    per_seed = {s.seed: s for arm_runs in settings.values() for s in arm_runs}  # every arm of a seed shares its start
    starts = [start_record(s, model_path, runs_dir, s.eval_split) for s in per_seed.values()]
    return {"calibration": delta, "runs": by_arm, "starts": [r for r in starts if r is not None]}


def _arm_settings(exp, arm, scale, delta) -> list:
    if plan.needs_delta(arm) and delta is None:
        return []
    return [plan.arm_settings(exp, arm, seed, scale, delta["delta"] if plan.needs_delta(arm) else None)
            for seed in exp.seeds]


def write_reports(names: list[str], scale: plan.Scale, done: dict, output_dir: str, meta: dict) -> list[dict]:
    """Each experiment's results.json, results.md and figures, and the index OUTPUT_DIR/results.md (every experiment
    reported in OUTPUT_DIR so far, this invocation's or an earlier one's)."""
    summaries = []
    for name in names:
        exp = plan.experiment(name, scale)
        summary = summarize(exp, done[name]["runs"], done[name]["calibration"], meta, done[name]["starts"])
        folder = os.path.join(output_dir, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(folder, "results.md"), "w") as f:
            f.write(render(summary))
        plot_experiment(exp, summary, done[name]["runs"], folder)
        summaries.append(summary)
    write_index(output_dir)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scale = scale_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if args.plan:
        print(estimate_cost(args.experiment, scale))
        return 0
    model_path, start = options.start_model(parser, args)
    if args.measure_groups:  # nothing is written
        quiet_libraries()
        for name in args.experiment:
            print(describe(name, measure_groups(plan.experiment(name, scale), scale, model_path)), flush=True)
        return 0
    options.make_output_dir(parser, args.output_dir)
    runs_dir = args.runs_dir or os.path.join(args.output_dir, "runs")
    options.make_output_dir(parser, runs_dir, "--runs-dir")
    quiet_libraries()
    probes = os.path.join(args.output_dir, "probe-runs")
    if args.probe_cost or args.check_run:
        if args.probe_cost:
            print(probe_cost(args.experiment, scale, model_path, probes))
        if args.check_run:
            print(check_runs(args.check_run, scale, model_path, probes))
        return 0
    t0, cpu0 = time.time(), time.process_time()
    done = run_study(args.experiment, scale, model_path, runs_dir, args.partial)
    command = "disco-trl study " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command.strip(), "partial": args.partial, "scale": json.loads(json.dumps(asdict(scale))),
            "start": start,
            "this_invocation": {"wall_seconds": round(time.time() - t0, 1),
                                "cpu_seconds": round(time.process_time() - cpu0, 1)}}
    for summary in write_reports(args.experiment, scale, done, args.output_dir, meta):
        print(render(summary))
    print(f"[study] wrote {args.output_dir}/results.md and " +
          ", ".join(f"{args.output_dir}/{n}/" for n in args.experiment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
