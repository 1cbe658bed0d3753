"""The command-line options `disco-trl demo`, `compare` and `study` share: value parsers, the common flags, the
`--quick` settings, the starting model (`--start-model`, default the shipped start), and turning parsed flags into a
run's `RunSettings`.

Value parsers for argparse's `type=`: `positive_int("--steps")` and friends name their flag in the error; `seed`,
`learning_rate` and `method` parse one item and are wrapped in `comma_list` for flags that take several.
"""

from __future__ import annotations

import argparse
import math
import os

from .experiment import RunSettings
from .methods import check_method
from .shipped import RECORD, DamagedStart, shipped_start, start_summary, verify


DEMO_STEPS = 400  # the demo's default budget (the comparison uses RunSettings.max_steps per run)
DEMO_EVAL_EVERY = 80  # held-out Pass@1 during training, for the plot

# The --quick smoke run: the shipped start, a few steps, a small evaluation.
QUICK = dict(steps=8, eval_questions=16, eval_samples=2, questions_per_generation=8)


# --------------------------------------------------------------------------------------------------- value parsers
def _number_parser(name: str, convert, kind: str, ok, bound: str):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {text}")
        return value

    return parse


def positive_int(name: str):
    return _number_parser(name, int, "whole number", lambda v: v >= 1, ">= 1")


def nonneg_int(name: str):
    return _number_parser(name, int, "whole number", lambda v: v >= 0, ">= 0")


def positive_float(name: str):
    return _number_parser(name, float, "number", lambda v: v > 0 and math.isfinite(v), "a finite number > 0")


def nonneg_float(name: str):
    return _number_parser(name, float, "number", lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")


def comma_list(parse, name: str):
    """A comma-separated list of distinct values, each read by `parse`."""

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


def method(text: str) -> str:
    """A name of the method registry (`disco_trl.demo.methods`)."""
    check_method(text)
    return text


def seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"seeds must be >= 0, got {value}")
    return value


def learning_rate(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"learning rates must be finite numbers > 0, got {text}")
    return value


# --------------------------------------------------------------------------------------------------- common flags
def add_common_arguments(parser: argparse.ArgumentParser, defaults: RunSettings) -> None:
    """Flags shared by `demo`, `compare` and `study`."""
    add = parser.add_argument
    add("--steps", type=positive_int("--steps"), default=None,
        help=f"optimizer steps ({defaults.updates_per_generation} per generation batch; default {defaults.max_steps}, "
             f"--quick: {QUICK['steps']})")
    add("--temperature", type=positive_float("--temperature"), default=defaults.temperature,
        help=f"sampling temperature for training and evaluation (default {defaults.temperature})")
    add("--eval-questions", type=positive_int("--eval-questions"), default=None,
        help=f"held-out questions (default {defaults.eval_questions}, at most 100)")
    add("--eval-samples", type=positive_int("--eval-samples"), default=None,
        help=f"samples per held-out question for Pass@1 (default {defaults.eval_samples})")
    add("--eval-every", type=nonneg_int("--eval-every"), default=None,
        help=f"also evaluate every N optimizer steps during training (0: before and after only; default: demo "
             f"{DEMO_EVAL_EVERY}, compare 0)")
    add("--tau", type=positive_float("--tau"), default=None,
        help="DisCO's DRO temperature (DisCO methods only; default: the paper's 10 for log-L, 1 for L-ratio)")
    add("--kl-delta", type=nonneg_float("--kl-delta"), default=defaults.kl_delta,
        help=f"DisCO's trust-region radius delta (DisCO methods only; default {defaults.kl_delta:g}, the paper's)")
    add("--kl-beta", type=nonneg_float("--kl-beta"), default=defaults.kl_beta,
        help=f"DisCO's squared-hinge weight beta (DisCO methods only; default {defaults.kl_beta:g}, the paper's; 0 "
             "turns the KL constraint off)")
    add_start_model_argument(parser)
    add("--skip-uninformative-questions", action="store_true",
        help="DisCO methods only: train only on questions with both right and wrong completions "
             "(DiscoConfig.skip_uninformative_questions; docs/method.md)")
    add("--fill-informative-questions", action="store_true",
        help="DisCO methods only: generation rounds until each batch holds its nominal number of questions with "
             "signal (DiscoConfig.fill_informative_questions; docs/method.md); the method disco-fill has it on")
    add("--max-generation-rounds", type=positive_int("--max-generation-rounds"),
        default=defaults.max_generation_rounds,
        help=f"with filling: generation rounds per batch at most, the first included (default "
             f"{defaults.max_generation_rounds})")
    add("--quick", action="store_true",
        help="a smoke run of well under a minute: the same start, few steps, small evaluation")


def add_start_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start-model", default=None, metavar="FOLDER",
                        help="the starting model: a save_pretrained folder of a model (safetensors) and its tokenizer "
                             "(default: the start shipped with disco-trl, disco_trl/demo/shipped_start; docs/demo.md)")


def start_model(parser: argparse.ArgumentParser, args) -> tuple[str, dict]:
    """The starting model's folder and what results record about it (`shipped.start_summary`): `--start-model`, or
    the shipped start. Its files are checked against its record when it has one; a missing or damaged start stops the
    command with one line, before any weights load."""
    try:
        if args.start_model is None:
            path, _ = shipped_start()
        else:
            path = args.start_model
            if os.path.isfile(os.path.join(path, RECORD)):
                verify(path)
        return path, start_summary(path)
    except DamagedStart as err:
        parser.error(f"--start-model: {err}" if args.start_model else str(err))


def settings_from_args(args, method: str, seed: int, learning_rate: float, *, default_steps: int | None = None,
                       default_eval_every: int | None = None) -> RunSettings:
    """One run's settings from the common flags (`--quick` fills what is not given); a ValueError for a bad value."""
    defaults = RunSettings()
    if default_steps is not None:
        defaults.max_steps = default_steps
    if default_eval_every is not None:
        defaults.eval_every = default_eval_every
    quick = QUICK if args.quick else {}
    settings = RunSettings(
        method=method,
        seed=seed,
        learning_rate=learning_rate,
        temperature=args.temperature,
        max_steps=args.steps or quick.get("steps", defaults.max_steps),
        eval_questions=args.eval_questions or quick.get("eval_questions", defaults.eval_questions),
        eval_samples=args.eval_samples or quick.get("eval_samples", defaults.eval_samples),
        questions_per_generation=quick.get("questions_per_generation", defaults.questions_per_generation),
        eval_every=args.eval_every if args.eval_every is not None else (0 if args.quick else defaults.eval_every),
        tau=args.tau,
        kl_delta=args.kl_delta,
        kl_beta=args.kl_beta,
        skip_uninformative_questions=getattr(args, "skip_uninformative_questions", False),
        fill_informative_questions=getattr(args, "fill_informative_questions", False),
        max_generation_rounds=getattr(args, "max_generation_rounds", defaults.max_generation_rounds),
    )
    if settings.eval_questions > 100:
        raise ValueError(f"--eval-questions={settings.eval_questions}: at most 100 held-out questions are reserved.")
    settings.validate()
    return settings


def make_output_dir(parser: argparse.ArgumentParser, path: str, flag: str = "--output-dir") -> None:
    """Create a command's output folder, or stop with one line saying why it cannot be."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        parser.error(f"{flag} {path!r} cannot be created: {err}")
