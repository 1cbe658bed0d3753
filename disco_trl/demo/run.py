"""`disco-trl demo`: a real DisCO run on one CPU, end to end, in about ten minutes.

1. The start: the ~1M-parameter Qwen2-style model and task tokenizer shipped with the package (`shipped.py`), built
   once by `warmstart.py` (fine-tuned on worked solutions of generated arithmetic questions, 1-4 operations, by a
   teacher that slips, so the model is right sometimes and wrong often, like the paper's distilled SFT starting
   points). Every machine starts from the same model; its files are checked against their recorded fingerprint.
2. Held-out Pass@1 (averaged over several samples per question) before training.
3. DisCO training with `DiscoTrainer` (TRL's progress bar): 8 completions per question, several updates per
   generation batch (so the old-policy ratio and the KL hinge are exercised), constant learning rate.
4. Held-out Pass@1 after training, a short table, and a PNG of reward, entropy and KL against step.

    disco-trl demo                       # the default run (minutes on 2 cores; docs/demo.md)
    disco-trl demo --quick               # a smoke run (few steps, small evaluation)
    disco-trl demo --method grpo --steps 80 --seed 1 --output-dir out/
    disco-trl demo --check-start         # verify the shipped start and measure its held-out Pass@1 (seconds)
    disco-trl demo --rebuild-start       # build the start again (minutes) and say whether it matches the shipped one
    disco-trl demo --model smollm2       # the real-model demo (demo/real.py): DisCO vs GRPO on SmolLM2, vLLM, LoRA
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import options
from .experiment import RunSettings, quiet_libraries, run_method
from .methods import DISCO_METHODS, METHODS
from .options import DEMO_EVAL_EVERY, DEMO_STEPS
from .plots import kl_key, plot_run, start_end
from .rebuild import REBUILT_FOLDER, check_start, rebuild_and_compare
from .shipped import SHIPPED_DIR, DamagedStart, verify
from .warmstart import WarmStartConfig


DEFAULT_OUTPUT_DIR = "disco-demo-output"


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings(max_steps=DEMO_STEPS)
    parser = argparse.ArgumentParser(
        prog="disco-trl demo",
        description="A real DisCO training run on a generated arithmetic task, on CPU, offline: from the tiny "
                    "model shipped with disco-trl, measure held-out Pass@1, train, measure again, print a table and "
                    "plot reward, entropy and KL against step.",
    )
    parser.add_argument("--model", choices=["toy", "smollm2"], default="toy",
                        help="toy: this demo (default); smollm2: the real-model demo, DisCO against GRPO on "
                             "SmolLM2-135M-Instruct with vLLM and LoRA, run from .venv-vllm (its own flags: "
                             "`disco-trl demo --model smollm2 --help`)")
    parser.add_argument("--method", default="disco", choices=list(METHODS),
                        help="training objective, a name of disco_trl.demo.methods (default: disco = DisCO with the "
                             "log-L score)")
    parser.add_argument("--seed", type=options.nonneg_int("--seed"), default=0, help="random seed (default 0)")
    parser.add_argument("--learning-rate", type=options.positive_float("--learning-rate"),
                        default=defaults.learning_rate,
                        help=f"constant learning rate (default {defaults.learning_rate:g})")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"where the plot, results and final model go (default ./{DEFAULT_OUTPUT_DIR})")
    options.add_common_arguments(parser, defaults)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--check-start", action="store_true",
                       help="verify the start model's files against their fingerprint and measure its held-out "
                            "Pass@1 with the demo's evaluation; train nothing")
    start.add_argument("--rebuild-start", action="store_true",
                       help=f"build the start model again with the project's code (minutes of CPU) into "
                            f"OUTPUT_DIR/{REBUILT_FOLDER} and report whether it matches the shipped one; train "
                            f"nothing")
    return parser


def summary_table(result: dict) -> str:
    """The short before/after table printed at the end of the demo."""
    lh = result["log_history"]
    rows = [("held-out Pass@1", result["pass@1_before"], result["pass@1_after"])]
    rows.append(("training reward", *start_end(lh, "reward")))
    rows.append(("entropy (nats/token)", *start_end(lh, "entropy")))
    key = kl_key(lh)
    if key is not None:
        rows.append(("KL(pi_old||pi_theta)" if key == "disco/kl" else "KL(pi_theta||pi_ref)", *start_end(lh, key)))
    if any("disco/hinge_active" in e for e in lh):
        rows.append(("KL hinge active (frac)", *start_end(lh, "disco/hinge_active")))
    if any("disco/frac_mixed_questions" in e for e in lh):
        rows.append(("questions with + and -", *start_end(lh, "disco/frac_mixed_questions")))
    width = max(len(r[0]) for r in rows)

    def fmt(v):
        if v is None:
            return "n/a".rjust(9)
        return f"{v:9.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:9.2e}"

    lines = [f"{'':{width}}  {'start':>9}  {'end':>9}", f"{'-' * width}  {'-' * 9}  {'-' * 9}"]
    lines += [f"{name:{width}}  {fmt(a)}  {fmt(b)}" for name, a, b in rows]
    by_ops_b, by_ops_a = result["before"]["pass@1_by_ops"], result["after"]["pass@1_by_ops"]
    lines.append("")
    lines.append("held-out Pass@1 by number of operations: " + ", ".join(
        f"{k} op: {by_ops_b[k]:.2f} -> {by_ops_a[k]:.2f}" for k in by_ops_b))
    lines.append("(start/end of training metrics: mean over the first/last 10% of logged steps; Pass@1 before and "
                 "after training)")
    return "\n".join(lines)


def requested_model(argv: list[str]) -> str:
    """The `--model` of a command line ("toy" when not given), read before the toy demo's own flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="toy")
    return pre.parse_known_args(argv)[0].model


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if requested_model(argv) == "smollm2":
        from .real import main as real_demo  # noqa: PLC0415 - the real-model demo's own flags and imports

        return real_demo(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = options.settings_from_args(args, args.method, args.seed, args.learning_rate,
                                              default_steps=DEMO_STEPS, default_eval_every=DEMO_EVAL_EVERY)
    except ValueError as err:
        parser.error(str(err))
    if args.rebuild_start:
        options.make_output_dir(parser, args.output_dir)
        return rebuild(args, settings)
    model_path, start = options.start_model(parser, args)
    if args.check_start:
        quiet_libraries()
        check_start(model_path, settings)
        return 0
    options.make_output_dir(parser, args.output_dir)
    quiet_libraries()
    t0 = time.time()
    print(f"disco-trl demo: {METHODS[settings.method].label} on generated arithmetic (1-4 operations), CPU, offline.")
    print(f"[demo] start: {'the shipped model' if args.start_model is None else model_path} (fingerprint "
          f"{start['fingerprint']}; no warm start to run)")
    print(f"[demo] training: {settings.max_steps} optimizer steps, {settings.questions_per_generation} questions x "
          f"{settings.num_generations} completions per generation batch, {settings.updates_per_generation} updates "
          f"per batch, lr {settings.learning_rate:g} (constant), temperature {settings.temperature}")
    result = run_method(settings, model_path, os.path.join(args.output_dir, "run"))
    result["start"] = start
    plot_path = os.path.join(args.output_dir, "training_dynamics.png")
    plot_run(result["log_history"], plot_path,
             f"{METHODS[settings.method].label} on the demo task (seed {settings.seed})", result["eval_history"],
             kl_delta=settings.kl_delta if settings.method in DISCO_METHODS else None)
    result["plot"] = plot_path
    result["wall_seconds"] = round(time.time() - t0, 1)
    results_path = os.path.join(args.output_dir, "demo_results.json")
    with open(results_path, "w") as f:
        json.dump(result, f, indent=1, default=str)

    print()
    print(summary_table(result))
    print()
    print(f"plot:    {plot_path}")
    print(f"results: {results_path}")
    print(f"model:   {os.path.join(args.output_dir, 'run', 'final_model')}")
    print(f"total time {result['wall_seconds']:.0f}s")
    return 0


def rebuild(args, settings) -> int:
    """`--rebuild-start`: build the default start into OUTPUT_DIR/rebuilt-start and compare it with the shipped one
    (or `--start-model`)."""
    reference = args.start_model or str(SHIPPED_DIR)
    quiet_libraries()
    print(f"[rebuild] building the start model with the default WarmStartConfig (minutes of CPU), to compare with "
          f"{reference}")
    try:
        verify(reference)
    except DamagedStart as err:
        print(f"[rebuild] the reference cannot be compared: {err}", file=sys.stderr)
        reference = None
    folder = os.path.join(args.output_dir, REBUILT_FOLDER)
    rebuild_and_compare(WarmStartConfig(), folder, reference, settings)
    print(f"[rebuild] the rebuilt start: {folder} (use it with --start-model {folder}; report: "
          f"{os.path.join(args.output_dir, 'rebuild_report.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
