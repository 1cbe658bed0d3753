r"""Verifiable math reward: 1.0 when the last ``\boxed{}`` of a completion is equivalent to the reference answer.

    from disco_trl.rewards import boxed_math_reward
    trainer = DiscoTrainer(..., reward_funcs=boxed_math_reward)      # GRPOTrainer(...) takes it as well

`boxed_math_reward(completions, solution, **kwargs)` follows TRL's reward-function signature: `completions` are
plain strings or conversational message lists, `solution` is the dataset column with the reference answers (as made
by `disco_trl.data.load_math_dataset`). For each completion it

1. keeps the text after the last ``</think>`` when there is one (the answer of a reasoning model follows it),
2. takes the content of the last ``\boxed{...}`` (balanced braces; a truncated, unbalanced box gives 0.0),
3. decides the common cases on the spot: the same answer up to spacing/``\left``/``\dfrac`` spelling, or two plain
   integers/decimals (microseconds per completion, no process, no sympy), and
4. sends the rest to math-verify (the checker TRL's own `accuracy_reward` uses) running in a small pool of worker
   processes, in parallel across cores, with a hard wall-clock deadline per answer: a worker that does not answer in
   time (a huge power, a deeply nested expression) is killed and replaced, and that answer scores 0.0.

The reward therefore never hangs and never raises on a model's output, from the main thread, another thread or
another process. The pool starts lazily (about half a second, once per process) and stays up; it is sized to the
work (one worker per `ANSWERS_PER_WORKER` answers to grade, at most `max_workers`).

Environment knobs: ``DISCO_REWARD_WORKERS`` (maximum worker processes; ``0`` grades in-process, with math-verify's
signal timeouts in the main thread only: debugging aid, not hang-proof), ``DISCO_REWARD_TIMEOUT`` (seconds per
answer, default 5).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = [
    "boxed_math_reward",
    "extract_boxed_answer",
    "completion_text",
    "grade_answers",
    "BoxedMathReward",
    "MathGraderPool",
    "shutdown_grader_pool",
]

MAX_ANSWER_CHARS = 1000  # a boxed answer longer than this is not a final answer (references are < 250 chars)
DEFAULT_TIMEOUT_S = float(os.environ.get("DISCO_REWARD_TIMEOUT", "5"))
ANSWERS_PER_WORKER = 4  # one more worker (up to max_workers) per this many answers that need math-verify
_WORKER_SCRIPT = Path(__file__).with_name("_math_grader.py")
_BOX_COMMANDS = ("\\boxed", "\\fbox")


# --------------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the last assistant message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        return _message_text(chosen[-1]) if chosen else ""
    return "" if completion is None else str(completion)


def _message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _find_last_box(text: str) -> tuple[int, str] | None:
    best = None
    for command in _BOX_COMMANDS:
        start = text.rfind(command)
        while start != -1:
            after = start + len(command)
            # skip \boxedsomething (a longer macro name)
            if after < len(text) and text[after].isalpha():
                start = text.rfind(command, 0, start)
                continue
            if best is None or start > best[0]:
                best = (start, command)
            break
    return best


def _box_content(text: str, after: int) -> tuple[str, int] | None:
    """Content of the box whose command ends at `after`, and the index just past it; None if unbalanced/empty."""
    n = len(text)
    i = after
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        # \boxed 5 : TeX takes the next token; we take the run up to whitespace, '$' or the end.
        match = re.match(r"[^\s$]+", text[i : i + MAX_ANSWER_CHARS + 1])
        return (match.group(0), i + match.end()) if match else None
    depth = 0
    j = i
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def extract_boxed_answer(text: str, *, after_think: bool = True) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``) in `text`, or None when there is none.

    With `after_think`, only the text after the last ``</think>`` is searched when the text has one. Braces are
    matched (escaped ``\{``/``\}`` do not count), so ``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``; an unbalanced
    last box (a truncated completion) gives None, as does an empty one. ``\boxed 5`` (no braces) gives ``5``; a box
    that only wraps another box is unwrapped. Runs in time linear in the text, so megabyte completions are fine.
    """
    if not isinstance(text, str) or not text:
        return None
    if after_think:
        think_end = text.rfind("</think>")
        if think_end != -1:
            text = text[think_end + len("</think>") :]
    found = _find_last_box(text)
    if found is None:
        return None
    start, command = found
    box = _box_content(text, start + len(command))
    if box is None:
        return None
    answer = box[0].strip()
    # \boxed{\boxed{5}} -> 5
    for _ in range(8):
        inner = _find_last_box(answer)
        if inner is None or not answer.startswith(inner[1]):
            break
        nested = _box_content(answer, len(inner[1]))
        if nested is None or nested[1] != len(answer):
            break
        answer = nested[0].strip()
    return answer or None


# --------------------------------------------------------------------------------------------------------------------
# Fast path: decided without math-verify
# --------------------------------------------------------------------------------------------------------------------

_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\s+")
# Whitespace between two digits is significant (`2 3` is not `23`): kept as one space, so such an answer only
# matches the same digits spaced the same way here and anything else goes to math-verify. LaTeX spacing commands
# between digits (`1\,000`) are thousands separators and are still removed.
_DIGIT_GAP = re.compile(r"(?<=\d)\s+(?=\d)")
_KEPT_SPACE = "\x00"
_NUMBER = re.compile(r"[+-]?(\d{1,60}(\.\d{0,60})?|\.\d{1,60})")


def _normalize(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$")
    text = _DIGIT_GAP.sub(_KEPT_SPACE, text)
    text = _SPACING.sub("", text).replace(_KEPT_SPACE, " ")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def _as_number(text: str) -> Decimal | None:
    if _NUMBER.fullmatch(text) is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex only lets valid literals through
        return None


def _is_integral(text: str, value: Decimal) -> bool:
    return "." not in text or value == value.to_integral_value()


def _quick_grade(gold: str, answer: str) -> float | None:
    """1.0 / 0.0 when the answer can be decided without math-verify, else None."""
    g, a = _normalize(gold), _normalize(answer)
    if not a:
        return 0.0
    if g == a:
        return 1.0
    gv, av = _as_number(g), _as_number(a)
    if gv is not None and av is not None:
        if gv == av:
            return 1.0
        if _is_integral(g, gv) and _is_integral(a, av):
            return 0.0  # two different integers: nothing in math-verify would make them equal
    return None


# --------------------------------------------------------------------------------------------------------------------
# Worker pool: math-verify in killable processes
# --------------------------------------------------------------------------------------------------------------------


class _Worker:
    """One grader process (``python _math_grader.py``) and its line-buffered reply pipe."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        env.pop("PYTHONSTARTUP", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the trainer, not to the graders
        )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.ready = False
        self.busy_with: int | None = None  # request id of the answer being graded (ids are never reused)
        self.deadline = 0.0

    def send(self, request_id: int, gold: str, answer: str, timeout: float) -> bool:
        try:
            self.proc.stdin.write((json.dumps({"i": request_id, "g": gold, "a": answer}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        self.busy_with = request_id
        self.deadline = time.monotonic() + timeout
        return True

    def read_lines(self) -> list[dict] | None:
        """Complete replies available now; None when the worker has died (EOF)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        replies = []
        for line in lines:
            try:
                replies.append(json.loads(line))
            except ValueError:
                continue
        return replies

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def _default_max_workers() -> int:
    env = os.environ.get("DISCO_REWARD_WORKERS")
    if env is not None and env.strip() != "":
        return max(0, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


class MathGraderPool:
    """Grades (gold, answer) pairs with math-verify in worker processes, with a hard per-answer deadline.

    Thread-safe (one grading call at a time) and fork-aware (a forked child starts its own workers).
    """

    def __init__(self, max_workers: int | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.max_workers = _default_max_workers() if max_workers is None else max(1, int(max_workers))
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.restarts = 0  # workers killed for running past the deadline or dying
        self._request_ids = itertools.count()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # we are a forked child: the parent's workers are not ours to talk to
            self._workers = []
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def _spawn(self) -> _Worker:
        return _Worker()

    def _await_ready(self, worker: _Worker, until: float) -> bool:
        while time.monotonic() < until:
            ready, _, _ = select.select([worker.fd], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                continue
            lines = worker.read_lines()
            if lines is None:
                return False
            if any(line.get("ready") for line in lines):
                worker.ready = True
                return True
        return False

    def grade(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """math-verify verdicts for `pairs` of (gold, answer); False for anything that fails or runs out of time."""
        if not pairs:
            return []
        self._check_fork()
        with self._lock:
            try:
                return self._grade_locked(list(pairs))
            except BaseException:
                # interrupted (KeyboardInterrupt, ...): workers still busy with this call's answers are stopped, so
                # that the next call does not wait behind them
                for worker in self._workers:
                    if worker.busy_with is not None:
                        worker.kill()
                self._workers = [w for w in self._workers if w.busy_with is None]
                raise

    def _grade_locked(self, pairs: list[tuple[str, str]]) -> list[bool]:
        wanted = min(self.max_workers, max(1, -(-len(pairs) // ANSWERS_PER_WORKER)))
        self._workers = [w for w in self._workers if w.alive()]
        while len(self._workers) < wanted:
            self._workers.append(self._spawn())
        startup_deadline = time.monotonic() + max(30.0, self.timeout)
        idle = [w for w in self._workers[:wanted] if w.ready or self._await_ready(w, startup_deadline)]
        if not idle:
            raise RuntimeError(
                f"disco_trl.rewards: the math-verify grader process ({_WORKER_SCRIPT}) did not start. Check that "
                f"`{sys.executable} {_WORKER_SCRIPT}` runs (is math-verify installed?), or set "
                "DISCO_REWARD_WORKERS=0 to grade in-process."
            )

        results = [False] * len(pairs)
        todo = list(range(len(pairs) - 1, -1, -1))  # a stack popped from the end: the first answers go first
        busy: list[_Worker] = []
        index_of: dict[int, int] = {}  # request id -> position in `pairs`

        def replace(worker: _Worker) -> None:
            if worker in busy:
                busy.remove(worker)
            worker.busy_with = None
            worker.kill()
            self.restarts += 1
            fresh = self._spawn()
            self._workers[self._workers.index(worker)] = fresh
            if self._await_ready(fresh, time.monotonic() + max(30.0, self.timeout)):
                idle.append(fresh)

        while todo or busy:
            while todo and idle:
                worker = idle.pop()
                index = todo.pop()
                request_id = next(self._request_ids)
                if worker.send(request_id, *pairs[index], timeout=self.timeout):
                    index_of[request_id] = index
                    busy.append(worker)
                else:  # broken pipe: the worker died between two answers; this answer goes to a fresh one
                    todo.append(index)
                    replace(worker)
            if not busy:
                if todo:  # no worker could be (re)started: give up on the rest rather than stop training
                    warnings.warn(
                        f"disco_trl.rewards: no math-verify grader process could be started; {len(todo)} answers "
                        "score 0.0.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                break
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready_fds, _, _ = select.select([w.fd for w in busy], [], [], wait)
            for worker in [w for w in busy if w.fd in ready_fds]:
                replies = worker.read_lines()
                if replies is None:  # died while grading (e.g. the OOM killer): that answer keeps its 0.0
                    replace(worker)
                    continue
                for reply in replies:
                    if worker.busy_with is not None and reply.get("i") == worker.busy_with:
                        results[index_of[worker.busy_with]] = bool(reply.get("r"))
                        worker.busy_with = None
                if worker.busy_with is None:
                    busy.remove(worker)
                    idle.append(worker)
            now = time.monotonic()
            for worker in [w for w in busy if w.deadline <= now]:
                replace(worker)  # past the deadline: the answer keeps its 0.0
        return results

    def shutdown(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                for worker in self._workers:
                    worker.close()
            self._workers = []

    @property
    def num_workers(self) -> int:
        return len([w for w in self._workers if w.alive()])


_POOLS: dict[tuple[int, float], MathGraderPool] = {}
_POOL_LOCK = threading.Lock()


def _get_pool(max_workers: int | None = None, timeout: float | None = None) -> MathGraderPool:
    """The shared, persistent pool for these settings (created on first use)."""
    key = (_default_max_workers() if max_workers is None else max(1, int(max_workers)),
           DEFAULT_TIMEOUT_S if timeout is None else float(timeout))
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = MathGraderPool(max_workers=key[0], timeout=key[1])
        return pool


def shutdown_grader_pool() -> None:
    """Stop the grader processes (they are also stopped at interpreter exit; the next call starts new ones)."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown()


atexit.register(shutdown_grader_pool)


def _grade_in_process(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    from . import _math_grader

    _math_grader._quiet_math_verify_logs()
    return [_math_grader.grade(gold, answer) for gold, answer in pairs]


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def grade_answers(
    answers: Sequence[str | None],
    golds: Sequence[str],
    *,
    max_workers: int | None = None,
    timeout: float | None = None,
    fast_path: bool = True,
) -> list[float]:
    """1.0/0.0 per extracted answer (None scores 0.0) against its reference: fast path, then the worker pool.

    `max_workers=0` (or ``DISCO_REWARD_WORKERS=0``) grades in this process instead (not hang-proof);
    `fast_path=False` sends every answer to math-verify (for measurements).
    """
    if len(answers) != len(golds):
        raise ValueError(f"grade_answers: {len(answers)} answers but {len(golds)} reference solutions.")
    scores: list[float] = [0.0] * len(answers)
    slow: list[int] = []
    for k, (answer, gold) in enumerate(zip(answers, golds)):
        if answer is None or gold is None or len(answer) > MAX_ANSWER_CHARS:
            continue
        quick = _quick_grade(str(gold), answer) if fast_path else None
        if quick is None:
            slow.append(k)
        else:
            scores[k] = quick
    if not slow:
        return scores
    pairs = [(str(golds[k]), answers[k]) for k in slow]
    limit = _default_max_workers() if max_workers is None else max_workers
    if limit == 0:
        verdicts = _grade_in_process(pairs)
    else:
        verdicts = _get_pool(limit, timeout).grade(pairs)
    for k, ok in zip(slow, verdicts):
        scores[k] = 1.0 if ok else 0.0
    return scores


def _solutions_for(completions: Sequence[Any], solution: Any) -> list[str]:
    if solution is None:
        raise ValueError(
            "boxed_math_reward needs the reference answers: the dataset must have a `solution` column "
            "(disco_trl.data.load_math_dataset makes one), passed to the reward function as `solution=`."
        )
    if isinstance(solution, str):
        solution = [solution] * len(completions)
    solution = list(solution)
    if len(solution) != len(completions):
        raise ValueError(
            f"boxed_math_reward: {len(completions)} completions but {len(solution)} solutions; pass one reference "
            "answer per completion (TRL does this when the dataset has a `solution` column)."
        )
    return ["" if s is None else str(s) for s in solution]


def boxed_math_reward(completions: Sequence[Any], solution: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
    r"""TRL reward function: 1.0 if the last ``\boxed{}`` (after ``</think>``) equals `solution` mathematically, else 0.0.

    Works with plain-text completions (``list[str]``) and conversational ones (``list[list[dict]]``). Extra keyword
    arguments from the trainer (prompts, completion_ids, trainer_state, ...) are accepted; when TRL passes
    `log_extra`, the extracted answers are logged to the completions table as column ``boxed_answer``.
    """
    texts = [completion_text(c) for c in completions]
    golds = _solutions_for(completions, solution)
    answers = [extract_boxed_answer(t) for t in texts]
    scores = grade_answers(answers, golds)
    log_extra = kwargs.get("log_extra")
    if callable(log_extra):
        try:
            log_extra("boxed_answer", [a if a is not None else "[no boxed answer]" for a in answers])
        except Exception:  # noqa: BLE001 - logging must not cost a training step
            pass
    return scores


class BoxedMathReward:
    """`boxed_math_reward` with its own settings (picklable, so it also works with TRL's async rollout workers).

        reward = BoxedMathReward(timeout=10, max_workers=4, after_think=True)
    """

    def __init__(self, *, timeout: float | None = None, max_workers: int | None = None, after_think: bool = True):
        self.timeout = timeout
        self.max_workers = max_workers
        self.after_think = after_think
        self.__name__ = "boxed_math_reward"

    def __call__(self, completions: Sequence[Any], solution: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        golds = _solutions_for(completions, solution)
        answers = [extract_boxed_answer(t, after_think=self.after_think) for t in texts]
        return grade_answers(answers, golds, max_workers=self.max_workers, timeout=self.timeout)
