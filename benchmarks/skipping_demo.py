#!/usr/bin/env python
"""The demo task with `skip_uninformative_questions` off and on, over several seeds: Pass@1 trajectory and time.

For each seed, the demo's DisCO run (`disco_trl.demo.experiment.run_method`, the settings of `disco-trl demo`) is
trained twice from the shipped start (`disco_trl/demo/shipped.py`), once with the option off (the paper's objective)
and once on; the order of the two alternates between seeds so that a slow phase of a shared machine does not always
hit the same side. Writes `skipping_demo.json` (per run: held-out Pass@1 every `--eval-every` steps, training
reward, the fraction of mixed questions, skipped updates, train wall time and TRL's per-step `step_time`) and
`skipping_demo.md` (the table) to `--output-dir`.

    flock /tmp/disco-cpu.lock python benchmarks/skipping_demo.py --output-dir docs/skipping
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from disco_trl.demo.experiment import RunSettings, run_method
from disco_trl.demo.options import DEMO_EVAL_EVERY, DEMO_STEPS
from disco_trl.demo.shipped import shipped_start, start_summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="skipping_demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"optimizer steps per run (default {DEMO_STEPS})")
    p.add_argument("--eval-every", type=int, default=DEMO_EVAL_EVERY,
                   help=f"held-out Pass@1 every N steps (default {DEMO_EVAL_EVERY})")
    p.add_argument("--eval-questions", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--output-dir", default="outputs/skipping_demo")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seeds or args.steps < 1 or args.eval_every < 0:
        p.error("--seeds must list integers, --steps must be >= 1, --eval-every >= 0")
    return args


def summarise_run(result: dict, skip: bool, seed: int) -> dict:
    logs = result["log_history"]

    def series(key):
        return [h[key] for h in logs if key in h]

    return {
        "seed": seed,
        "skip_uninformative_questions": skip,
        "pass@1_history": result["eval_history"],
        "pass@1_before": result["pass@1_before"],
        "pass@1_after": result["pass@1_after"],
        "pass@1_after_by_ops": result["after"]["pass@1_by_ops"],
        "reward_mean": statistics.mean(series("reward")),
        "frac_mixed_questions_mean": statistics.mean(series("disco/frac_mixed_questions")),
        "skipped_updates": int(sum(series("disco/skipped_update"))),
        "kl_mean": statistics.mean(series("disco/kl")) if series("disco/kl") else None,
        "step_time_sum_s": round(sum(series("step_time")), 2),
        "train_seconds": result["train_seconds"],
        "total_seconds": result["total_seconds"],
    }


def markdown(runs: list[dict], config: dict) -> str:
    lines = [f"Command: `{config['command']}`", "",
             "| seed | option | Pass@1 trajectory (steps "
             + ", ".join(str(h["step"]) for h in runs[0]["pass@1_history"])
             + ") | mixed questions | skipped updates | sum step_time s | train wall s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in runs:
        traj = " / ".join(f"{h['pass@1']:.3f}" for h in r["pass@1_history"])
        lines.append(f"| {r['seed']} | {'on' if r['skip_uninformative_questions'] else 'off'} | {traj} | "
                     f"{r['frac_mixed_questions_mean']:.3f} | {r['skipped_updates']} | {r['step_time_sum_s']:.1f} | "
                     f"{r['train_seconds']:.1f} |")
    lines.append("")
    for skip in (False, True):
        side = [r for r in runs if r["skip_uninformative_questions"] == skip]
        finals = [r["pass@1_after"] for r in side]
        lines.append(f"- option {'on ' if skip else 'off'}: final Pass@1 mean {statistics.mean(finals):.3f} "
                     f"(per seed {', '.join(f'{v:.3f}' for v in finals)}), sum step_time mean "
                     f"{statistics.mean(r['step_time_sum_s'] for r in side):.1f} s, train wall mean "
                     f"{statistics.mean(r['train_seconds'] for r in side):.1f} s")
    ratios = []
    for seed in sorted({r["seed"] for r in runs}):
        on = next(r for r in runs if r["seed"] == seed and r["skip_uninformative_questions"])
        off = next(r for r in runs if r["seed"] == seed and not r["skip_uninformative_questions"])
        ratios.append((seed, on["step_time_sum_s"] / off["step_time_sum_s"],
                       on["train_seconds"] / off["train_seconds"]))
    lines.append("- on/off per seed (sum step_time, train wall): " + ", ".join(
        f"seed {s}: {a:.3f}, {b:.3f}" for s, a, b in ratios))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path, _ = shipped_start()
    runs = []
    t0 = time.time()
    for i, seed in enumerate(args.seeds):
        for skip in ((False, True) if i % 2 == 0 else (True, False)):
            settings = RunSettings(method="disco", seed=seed, max_steps=args.steps, eval_every=args.eval_every,
                                   eval_questions=args.eval_questions, eval_samples=args.eval_samples,
                                   disable_tqdm=True, skip_uninformative_questions=skip)
            with tempfile.TemporaryDirectory(prefix="skipping-demo-") as tmp:
                result = run_method(settings, model_path, tmp, log=lambda m: print(m, flush=True), save_model=False)
            runs.append(summarise_run(result, skip, seed))
            (out / "skipping_demo.partial.json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")  # so far
            print(f"[skipping-demo] seed {seed} skip={skip}: Pass@1 {result['pass@1_before']:.3f} -> "
                  f"{result['pass@1_after']:.3f}, train {result['train_seconds']:.1f} s", flush=True)
    config = {"command": "python benchmarks/skipping_demo.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": asdict(RunSettings(method="disco", max_steps=args.steps, eval_every=args.eval_every,
                                             eval_questions=args.eval_questions, eval_samples=args.eval_samples)),
              "seeds": args.seeds, "start": start_summary(model_path), "wall_s": round(time.time() - t0, 1)}
    payload = {"config": config, "runs": runs}
    (out / "skipping_demo.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / "skipping_demo.md").write_text(markdown(runs, config))
    print(markdown(runs, config))
    return payload


if __name__ == "__main__":
    main()
