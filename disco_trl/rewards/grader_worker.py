"""Math-equivalence grading with math-verify, and the worker process that runs it in isolation.

This file is deliberately self-contained (it imports math-verify and the standard library only, never the
`disco_trl` package, whose import pulls in torch and TRL): `disco_trl.rewards.pool` starts it as a script,
``python grader_worker.py``, so a worker process is ready in a fraction of a second, imports nothing of the user's
training script (unlike multiprocessing's spawn/forkserver start methods) and can be killed when an answer makes
sympy hang in C code, where math-verify's own ``signal.alarm`` timeouts cannot reach it.

Protocol (one JSON object per line): the parent writes ``{"i": id, "g": gold, "a": answer}`` to the worker's stdin,
the worker answers ``{"i": id, "r": 0 or 1}`` on its stdout. An empty line or EOF ends the worker.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from functools import lru_cache


# Seconds math-verify may spend on one parse / one comparison (signal-based, effective in a main thread only).
PARSE_TIMEOUT = 2
VERIFY_TIMEOUT = 2
# Address-space cap for a worker process: an answer such as 9^{9^{9^9}} fails with MemoryError instead of
# swallowing the machine's memory before the parent's wall-clock deadline kills it.
WORKER_MEMORY_LIMIT_BYTES = 3 * 1024**3


def quiet_math_verify_logs() -> None:
    # math-verify logs the whole offending input at WARNING on every timeout; keep worker stderr readable.
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _timeouts() -> tuple[int | None, int | None]:
    # signal.alarm only works in the main thread; elsewhere the caller must bound the time (the worker pool does).
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT, VERIFY_TIMEOUT
    return None, None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """Parse a reference answer into math-verify candidates (cached: a gold answer is graded num_generations times).

    The reference is tried boxed first (how the paper's prompt asks the model to answer, and where math-verify's
    LaTeX normalisation is strongest), then as-is with math-verify's default LaTeX + plain-expression extraction
    (TRL's `accuracy_reward` parses the solution this way); every parsed candidate is kept, so a reference that
    only one of the two readings understands still grades.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse  # noqa: PLC0415 - see grade

    parse_timeout, _ = _timeouts()
    candidates: list = []
    boxed = parse(
        "\\boxed{" + gold + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        parsing_timeout=parse_timeout,
    )
    candidates.extend(boxed)
    if not boxed or all(isinstance(c, str) for c in boxed):
        plain = parse(
            gold, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=parse_timeout
        )
        candidates.extend(c for c in plain if c not in candidates)
    return tuple(candidates)


def _parse_answer(answer: str) -> list:
    """Parse a model's boxed answer the way TRL's `accuracy_reward` parses completions (boxed first, units on)."""
    from latex2sympy2_extended import NormalizationConfig  # noqa: PLC0415 - see grade
    from math_verify import LatexExtractionConfig, parse  # noqa: PLC0415 - see grade

    parse_timeout, _ = _timeouts()
    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=[
            LatexExtractionConfig(
                # TRL's accuracy_reward uses NormalizationConfig(units=True); we also repair malformed operators
                # (\frac43, \sqrt2), which models write as often as references do, and apply the small nits.
                normalization_config=NormalizationConfig(
                    basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
                ),
                boxed_match_priority=0,
                try_extract_without_anchor=False,
            )
        ],
        extraction_mode="first_match",
        parsing_timeout=parse_timeout,
    )


def grade(gold: str, answer: str) -> bool:
    """True when `answer` (the content of a \\boxed{}) is mathematically equivalent to the reference `gold`.

    Runs math-verify in the calling process. Never raises; anything math-verify cannot handle grades False.
    Time is bounded by math-verify's signal timeouts only in a main thread: call it through the worker pool in
    `disco_trl.rewards` for a hard bound everywhere.
    """
    # math-verify (sympy: a quarter of a second) is imported on the first answer that needs it, not when
    # disco_trl.rewards (which imports this module for the in-process mode) is imported
    from math_verify import verify  # noqa: PLC0415

    try:
        gold_parsed = _parse_gold(gold)
        if not gold_parsed:
            return False
        answer_parsed = _parse_answer(answer)
        if not answer_parsed:
            return False
        _, verify_timeout = _timeouts()
        return bool(verify(list(gold_parsed), answer_parsed, timeout_seconds=verify_timeout))
    except BaseException as exc:  # a grader must not take training down (MemoryError, RecursionError...)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return False


def _limit_memory() -> None:
    try:
        import resource  # noqa: PLC0415 - POSIX only: elsewhere the worker runs without the cap

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = WORKER_MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_LIMIT_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without RLIMIT_AS
        pass


def worker_main() -> int:
    """Serve grading requests on stdin/stdout until EOF (see the module docstring for the protocol)."""
    # Keep the protocol channel private: anything printed by a library goes to stderr, not into our replies.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    quiet_math_verify_logs()
    _limit_memory()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    import math_verify  # noqa: F401, PLC0415 - imported here, before the worker announces it is ready

    protocol_out.write('{"ready": 1}\n')
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        request = json.loads(line)
        result = grade(request["g"], request["a"])
        protocol_out.write(json.dumps({"i": request["i"], "r": int(result)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
