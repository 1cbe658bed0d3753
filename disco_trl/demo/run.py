"""`disco-trl demo`: a real DisCO run on one CPU, end to end, in about ten minutes.

1. Warm start (cached after the first run): a task tokenizer and a ~1M-parameter Qwen2-style model are built
   locally and fine-tuned on worked solutions of generated arithmetic questions (1-4 operations), stopping early so
   the model is right sometimes and wrong often, like the paper's distilled SFT starting points.
2. Held-out Pass@1 (averaged over several samples per question) before training.
3. DisCO training with `DiscoTrainer` (TRL's progress bar): 8 completions per question, several updates per
   generation batch (so the old-policy ratio and the KL hinge are exercised), constant learning rate.
4. Held-out Pass@1 after training, a short table, and a PNG of reward, entropy and KL against step.

    disco-trl demo                       # the default run (about 10 minutes on 2 cores, first time included)
    disco-trl demo --quick               # a one-minute smoke run (tiny model, few steps)
    disco-trl demo --method grpo --steps 80 --seed 1 --output-dir out/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from .experiment import METHODS, RunSettings
from .warmstart import WarmStartConfig

DEFAULT_OUTPUT_DIR = "disco-demo-output"
DEMO_STEPS = 400  # the demo's default budget (the comparison uses RunSettings.max_steps per run)
DEMO_EVAL_EVERY = 80  # held-out Pass@1 during training, for the plot

# The --quick smoke run: a smaller model, a shorter warm start, a few steps, a small evaluation.
QUICK_WARMSTART = WarmStartConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128, sft_steps=120,
                                  sft_batch_size=32, sft_learning_rate=5e-3)
QUICK = dict(steps=8, eval_questions=16, eval_samples=2, questions_per_generation=8)


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def _nonneg_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {value}")
        return value

    return parse


def _positive_float(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text}")
        return value

    return parse


def _nonneg_float(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (value >= 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text}")
        return value

    return parse


def add_common_arguments(parser: argparse.ArgumentParser, defaults: RunSettings) -> None:
    """Flags shared by `demo` and `compare`."""
    parser.add_argument("--steps", type=_positive_int("--steps"), default=None,
                        help=f"optimizer steps ({defaults.updates_per_generation} per generation batch; "
                             f"default {defaults.max_steps}, --quick: {QUICK['steps']})")
    parser.add_argument("--temperature", type=_positive_float("--temperature"), default=defaults.temperature,
                        help=f"sampling temperature for training and evaluation (default {defaults.temperature})")
    parser.add_argument("--eval-questions", type=_positive_int("--eval-questions"), default=None,
                        help=f"held-out questions (default {defaults.eval_questions}, at most 100)")
    parser.add_argument("--eval-samples", type=_positive_int("--eval-samples"), default=None,
                        help=f"samples per held-out question for Pass@1 (default {defaults.eval_samples})")
    parser.add_argument("--eval-every", type=_nonneg_int("--eval-every"), default=None,
                        help=f"also evaluate every N optimizer steps during training (0: before and after only; "
                             f"default: demo {DEMO_EVAL_EVERY}, compare 0)")
    parser.add_argument("--tau", type=_positive_float("--tau"), default=None,
                        help="DisCO's DRO temperature (DisCO methods only; default: the paper's 10 for log-L, 1 for "
                             "L-ratio)")
    parser.add_argument("--kl-delta", type=_nonneg_float("--kl-delta"), default=defaults.kl_delta,
                        help=f"DisCO's trust-region radius delta (DisCO methods only; default {defaults.kl_delta:g}, "
                             "the paper's)")
    parser.add_argument("--kl-beta", type=_nonneg_float("--kl-beta"), default=defaults.kl_beta,
                        help=f"DisCO's squared-hinge weight beta (DisCO methods only; default {defaults.kl_beta:g}, "
                             "the paper's; 0 turns the KL constraint off)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the warm-started model is cached (default $DISCO_TRL_CACHE or ~/.cache/disco-trl)")
    parser.add_argument("--skip-uninformative-questions", action="store_true",
                        help="DisCO methods only: train only on questions with both right and wrong completions "
                             "(DiscoConfig.skip_uninformative_questions; docs/method.md)")
    parser.add_argument("--quick", action="store_true",
                        help="a one-minute smoke run: tiny model, short warm start, few steps, small evaluation")


def warmstart_config(quick: bool) -> WarmStartConfig:
    return QUICK_WARMSTART if quick else WarmStartConfig()


def settings_from_args(args, method: str, seed: int, learning_rate: float, *, default_steps: int | None = None,
                       default_eval_every: int | None = None) -> RunSettings:
    defaults = RunSettings()
    if default_steps is not None:
        defaults.max_steps = default_steps
    if default_eval_every is not None:
        defaults.eval_every = default_eval_every
    settings = RunSettings(
        method=method,
        seed=seed,
        learning_rate=learning_rate,
        temperature=args.temperature,
        max_steps=args.steps or (QUICK["steps"] if args.quick else defaults.max_steps),
        eval_questions=args.eval_questions or (QUICK["eval_questions"] if args.quick else defaults.eval_questions),
        eval_samples=args.eval_samples or (QUICK["eval_samples"] if args.quick else defaults.eval_samples),
        questions_per_generation=QUICK["questions_per_generation"] if args.quick else defaults.questions_per_generation,
        eval_every=args.eval_every if args.eval_every is not None else (0 if args.quick else defaults.eval_every),
        tau=args.tau,
        kl_delta=args.kl_delta,
        kl_beta=args.kl_beta,
        skip_uninformative_questions=getattr(args, "skip_uninformative_questions", False),
    )
    if settings.eval_questions > 100:
        raise ValueError(f"--eval-questions={settings.eval_questions}: at most 100 held-out questions are reserved.")
    settings.validate()
    return settings


def make_output_dir(parser, path: str) -> None:
    """Create `--output-dir`, or stop with one line saying why it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        parser.error(f"--output-dir {path!r} cannot be created: {err}")


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings(max_steps=DEMO_STEPS)
    parser = argparse.ArgumentParser(
        prog="disco-trl demo",
        description="A real DisCO training run on a generated arithmetic task, on CPU, offline: warm-start a tiny "
                    "model (cached), measure held-out Pass@1, train, measure again, print a table and plot reward, "
                    "entropy and KL against step.",
    )
    parser.add_argument("--method", default="disco", choices=list(METHODS),
                        help="training objective (default: disco = DisCO with the log-L score)")
    parser.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    parser.add_argument("--learning-rate", type=_positive_float("--learning-rate"), default=defaults.learning_rate,
                        help=f"constant learning rate (default {defaults.learning_rate:g})")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR,
                        help=f"where the plot, results and final model go (default ./{DEFAULT_OUTPUT_DIR})")
    add_common_arguments(parser, defaults)
    return parser


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def start_end(log_history: list[dict], key: str, fraction: float = 0.1) -> tuple[float | None, float | None]:
    """Mean of a metric over the first and the last `fraction` of its logged points (at least one each)."""
    from .plots import series

    _, values = series(log_history, key)
    if not values:
        return None, None
    n = max(1, int(len(values) * fraction))
    return _mean(values[:n]), _mean(values[-n:])


def summary_table(result: dict) -> str:
    """The short before/after table printed at the end of the demo."""
    from .plots import kl_key

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args, args.method, args.seed, args.learning_rate, default_steps=DEMO_STEPS,
                                      default_eval_every=DEMO_EVAL_EVERY)
    except ValueError as err:
        parser.error(str(err))
    make_output_dir(parser, args.output_dir)

    from .experiment import DISCO_METHODS, METHODS as labels, quiet_libraries, run_method
    from .plots import plot_run
    from .warmstart import load_or_build

    quiet_libraries()
    t0 = time.time()
    print(f"disco-trl demo: {labels[settings.method]} on generated arithmetic (1-4 operations), CPU, offline.")
    _, _, info = load_or_build(warmstart_config(args.quick), cache_dir=args.cache_dir)
    print(f"[demo] training: {settings.max_steps} optimizer steps, {settings.questions_per_generation} questions x "
          f"{settings.num_generations} completions per generation batch, {settings.updates_per_generation} updates "
          f"per batch, lr {settings.learning_rate:g} (constant), temperature {settings.temperature}")
    result = run_method(settings, info["path"], os.path.join(args.output_dir, "run"))
    result["warmstart"] = info
    plot_path = os.path.join(args.output_dir, "training_dynamics.png")
    plot_run(result["log_history"], plot_path,
             f"{labels[settings.method]} on the demo task (seed {settings.seed})", result["eval_history"],
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
    print(f"total time {result['wall_seconds']:.0f}s (warm start {'cached' if info['cached'] else 'built now'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
