"""`disco-trl` command line: one entry point, one subcommand per job.

    disco-trl train --config recipes/....yaml     # DisCO training (TRL script style; accelerate launch works too)
    disco-trl eval --model PATH --benchmarks ...  # Pass@1 / pass@k on the paper's benchmarks
    disco-trl demo                                # the CPU demo: a real DisCO run on a toy math task
    disco-trl compare                             # the demo task with DisCO variants and TRL's GRPO-family losses
    disco-trl study --experiment dro             # the study: DRO tau, trust region, long runs (docs/study.md)

Each subcommand lives in its own module and exposes `main(argv: list[str] | None) -> int | None`.
"""

from __future__ import annotations

import importlib
import sys


SUBCOMMANDS = {
    "train": ("disco_trl.scripts.train", "Train with DisCO (TrlParser: YAML --config or flags)."),
    "eval": ("disco_trl.eval.cli", "Evaluate a model: Pass@1 averaged over samples and pass@k per benchmark."),
    "demo": ("disco_trl.demo.run", "CPU demo: train the shipped tiny model with DisCO, report and plot."),
    "compare": ("disco_trl.demo.compare", "CPU comparison of DisCO, DisCO-b, GRPO, Dr. GRPO and DAPO (demo task)."),
    "study": ("disco_trl.demo.study.command", "CPU study: DRO temperature, trust region, long runs (docs/study.md)."),
}


def _usage() -> str:
    lines = ["usage: disco-trl <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `disco-trl <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"disco-trl: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
