"""The grader pool: math-verify in worker processes that can be killed, with a hard wall-clock deadline per answer.

A worker that does not answer in time (a huge power, a deeply nested expression: sympy can hang in C code, where
math-verify's own signal timeouts cannot reach) is killed and replaced, and that answer scores 0.0. The pool starts
lazily (about half a second, once per process) and stays up; it is sized to the work (one worker per
`ANSWERS_PER_WORKER` answers to grade, at most `max_workers`). Environment knobs: ``DISCO_REWARD_WORKERS`` (maximum
worker processes; ``0`` grades in-process) and ``DISCO_REWARD_TIMEOUT`` (seconds per answer, default 5).

Workers are ``python grader_worker.py`` subprocesses, not multiprocessing (or pebble) children: those cannot be
started from a daemonic process (a torch DataLoader worker); forked they are copies of the trainer, whose address
space leaves nothing under the workers' memory cap; spawned they import torch and TRL and the user's ``__main__``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path


DEFAULT_TIMEOUT_S = float(os.environ.get("DISCO_REWARD_TIMEOUT", "5"))
ANSWERS_PER_WORKER = 4  # one more worker (up to max_workers) per this many answers that need math-verify
_WORKER_SCRIPT = Path(__file__).with_name("grader_worker.py")


class _Worker:
    """One grader process (``python grader_worker.py``) and its line-buffered reply pipe."""

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


class _Call:
    """One `grade` call's bookkeeping: the answers still to send, idle and busy workers, the verdicts so far."""

    def __init__(self, pairs: list[tuple[str, str]], idle: list[_Worker]) -> None:
        self.pairs = pairs
        self.results = [False] * len(pairs)  # an answer that fails or runs out of time keeps its False
        self.todo = list(range(len(pairs) - 1, -1, -1))  # a stack popped from the end: the first answers go first
        self.idle = idle
        self.busy: list[_Worker] = []
        self.index_of: dict[int, int] = {}  # request id -> position in `pairs`


def default_max_workers() -> int:
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
        self.max_workers = default_max_workers() if max_workers is None else max(1, int(max_workers))
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
        call = _Call(pairs, self._ready_workers(len(pairs)))
        while call.todo or call.busy:
            self._dispatch(call)
            if not call.busy:
                if call.todo:  # no worker could be (re)started: give up on the rest rather than stop training
                    warnings.warn(
                        f"disco_trl.rewards: no math-verify grader process could be started; {len(call.todo)} "
                        "answers score 0.0.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                break
            self._collect_replies(call)
            now = time.monotonic()
            for worker in [w for w in call.busy if w.deadline <= now]:
                self._replace(worker, call)  # past the deadline: the answer keeps its 0.0
        return call.results

    def _ready_workers(self, n_answers: int) -> list[_Worker]:
        """Start workers up to the size this call needs (lazily, kept for later calls); those ready to grade."""
        wanted = min(self.max_workers, max(1, -(-n_answers // ANSWERS_PER_WORKER)))
        self._workers = [w for w in self._workers if w.alive()]
        while len(self._workers) < wanted:
            self._workers.append(self._spawn())
        startup_deadline = time.monotonic() + max(30.0, self.timeout)
        ready = [w for w in self._workers[:wanted] if w.ready or self._await_ready(w, startup_deadline)]
        if not ready:
            raise RuntimeError(
                f"disco_trl.rewards: the math-verify grader process ({_WORKER_SCRIPT}) did not start. Check that "
                f"`{sys.executable} {_WORKER_SCRIPT}` runs (is math-verify installed?), or set "
                "DISCO_REWARD_WORKERS=0 to grade in-process."
            )
        return ready

    def _dispatch(self, call: _Call) -> None:
        """Give each idle worker the next answer waiting."""
        while call.todo and call.idle:
            worker = call.idle.pop()
            index = call.todo.pop()
            request_id = next(self._request_ids)
            if worker.send(request_id, *call.pairs[index], timeout=self.timeout):
                call.index_of[request_id] = index
                call.busy.append(worker)
            else:  # broken pipe: the worker died between two answers; this answer goes to a fresh one
                call.todo.append(index)
                self._replace(worker, call)

    def _collect_replies(self, call: _Call) -> None:
        """Wait until a busy worker replies or the earliest deadline passes; record the verdicts that came."""
        wait = max(0.0, min(w.deadline for w in call.busy) - time.monotonic())
        ready_fds, _, _ = select.select([w.fd for w in call.busy], [], [], wait)
        for worker in [w for w in call.busy if w.fd in ready_fds]:
            replies = worker.read_lines()
            if replies is None:  # died while grading (e.g. the OOM killer): that answer keeps its 0.0
                self._replace(worker, call)
                continue
            for reply in replies:
                if worker.busy_with is not None and reply.get("i") == worker.busy_with:
                    call.results[call.index_of[worker.busy_with]] = bool(reply.get("r"))
                    worker.busy_with = None
            if worker.busy_with is None:
                call.busy.remove(worker)
                call.idle.append(worker)

    def _replace(self, worker: _Worker, call: _Call) -> None:
        """Kill `worker` (stuck, dead or broken) and put a fresh one in its place, idle once it is ready."""
        if worker in call.busy:
            call.busy.remove(worker)
        worker.busy_with = None
        worker.kill()
        self.restarts += 1
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        if self._await_ready(fresh, time.monotonic() + max(30.0, self.timeout)):
            call.idle.append(fresh)

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


def shared_pool(max_workers: int | None = None, timeout: float | None = None) -> MathGraderPool:
    """The shared, persistent pool for these settings (created on first use)."""
    key = (default_max_workers() if max_workers is None else max(1, int(max_workers)),
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
