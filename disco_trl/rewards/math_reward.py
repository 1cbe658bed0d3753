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
answer, default 5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .extraction import completion_text, extract_boxed_answer
from .grading import grade_answers


def solutions_for(completions: Sequence[Any], solution: Any, reward: str = "boxed_math_reward") -> list[str]:
    """One reference answer (a string) per completion, or a ValueError naming `reward` and the fix."""
    if solution is None:
        raise ValueError(
            f"{reward} needs the reference answers: the dataset must have a `solution` column "
            "(disco_trl.data.load_math_dataset makes one), passed to the reward function as `solution=`."
        )
    if isinstance(solution, str):
        solution = [solution] * len(completions)
    solution = list(solution)
    if len(solution) != len(completions):
        raise ValueError(
            f"{reward}: {len(completions)} completions but {len(solution)} solutions; pass one reference "
            "answer per completion (TRL does this when the dataset has a `solution` column)."
        )
    return ["" if s is None else str(s) for s in solution]


def boxed_math_reward(completions: Sequence[Any], solution: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
    r"""TRL reward function: 1.0 if the last ``\boxed{}`` (after ``</think>``) equals `solution` mathematically, else
    0.0.

    Works with plain-text completions (``list[str]``) and conversational ones (``list[list[dict]]``). Extra keyword
    arguments from the trainer (prompts, completion_ids, trainer_state, ...) are accepted; when TRL passes
    `log_extra`, the extracted answers are logged to the completions table as column ``boxed_answer``.
    """
    return grade_extracted(completions, solution, extract_boxed_answer, reward="boxed_math_reward",
                           column="boxed_answer", missing="[no boxed answer]", log_extra=kwargs.get("log_extra"))


def grade_extracted(completions: Sequence[Any], solution: Any, extract, *, reward: str, column: str, missing: str,
                    log_extra=None) -> list[float]:
    """What a reward function of this package does: each completion's text, its answer by `extract` (None: no
    answer, 0.0), graded against its `solution` (`grading.grade_answers`); when TRL passes `log_extra`, the answers
    go to the completions table as `column` (`missing` where none was found)."""
    texts = [completion_text(c) for c in completions]
    golds = solutions_for(completions, solution, reward)
    answers = [extract(t) for t in texts]
    scores = grade_answers(answers, golds)
    if callable(log_extra):
        try:
            log_extra(column, [a if a is not None else missing for a in answers])
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

    def __call__(
        self, completions: Sequence[Any], solution: Sequence[str] | None = None, **kwargs: Any
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        golds = solutions_for(completions, solution)
        answers = [extract_boxed_answer(t, after_think=self.after_think) for t in texts]
        return grade_answers(answers, golds, max_workers=self.max_workers, timeout=self.timeout)
