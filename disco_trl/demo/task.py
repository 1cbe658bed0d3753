"""The demo's verifiable task: multi-step integer arithmetic, generated in code, with graded difficulty.

A question is an expression of 1 to 4 operations (`+`, `-`, `*`) on small integers, evaluated with the usual
precedence (`*` before `+`/`-`, then left to right), for example ``7+3*4-9``. Its worked solution evaluates one
operation per line and ends with the answer in ``\\boxed{}``::

    3*4=12
    7+12=19
    19-9=10
    \\boxed{10}

The prompt asks for the final answer in ``\\boxed{}``, so the demo's reward is the same boxed-answer reward used for
real math training. Difficulty is the number of operations: one operation is a single arithmetic fact, four
operations chain four facts and carry two-digit intermediate values. Every intermediate value stays within
[-`max_abs`, `max_abs`] so that the arithmetic stays within reach of a tiny model.

The warm start imitates a distilled SFT model, which has the skill but often samples a flawed solution: its
demonstrations come from a teacher that *slips* (`slipped_solution`): each step's result is, with probability
`slip_rate`, off by a small amount (an off-by-one or a carry error), and the slip propagates to the final answer like
a real mistake. The warm-started model learns to slip too, and RL must learn not to -- the sharpening that RL with
verifiable rewards does on real reasoning models. The correct worked solution is `Problem.solution_text`.

Everything is a pure function of a seed: the same seed gives the same questions on any machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


OPS = ("+", "-", "*")
MIN_OPS, MAX_OPS = 1, 4
PROMPT_TEMPLATE = "Compute {expression}. Put the final answer in \\boxed{{}}."


SLIP_OFFSETS = (-10, -2, -1, 1, 2, 10)  # how a slipped step's result is off: an off-by-one/two, a carry error


@dataclass(frozen=True)
class Problem:
    expression: str  # e.g. "7+3*4-9"
    answer: int
    steps: tuple[str, ...]  # e.g. ("3*4=12", "7+12=19", "19-9=10")
    numbers: tuple[int, ...] = ()
    ops: tuple[str, ...] = ()

    @property
    def num_ops(self) -> int:
        return len(self.steps)

    @property
    def prompt_text(self) -> str:
        return PROMPT_TEMPLATE.format(expression=self.expression)

    @property
    def solution_text(self) -> str:
        """The worked solution (what the warm-start SFT teaches), ending with the boxed answer."""
        return "\n".join([*self.steps, f"\\boxed{{{self.answer}}}"])


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def solve(numbers: list[int], ops: list[str], slip=None) -> tuple[int, tuple[str, ...], int]:
    """Evaluate with precedence, one operation per step. Returns (answer, steps, largest |intermediate value|).

    `slip`, if given, maps each step's true result to the result written down (and used from then on)."""
    if len(numbers) != len(ops) + 1:
        raise ValueError(f"{len(numbers)} numbers need {len(numbers) - 1} operators, got {len(ops)}.")
    numbers, ops = list(numbers), list(ops)
    steps: list[str] = []
    largest = max(abs(n) for n in numbers)
    # Multiplications first, left to right.
    while "*" in ops:
        i = ops.index("*")
        a, b = numbers[i], numbers[i + 1]
        value = a * b if slip is None else slip(a * b)
        steps.append(f"{a}*{b}={value}")
        numbers[i : i + 2] = [value]
        del ops[i]
        largest = max(largest, abs(value))
    # Then additions and subtractions, left to right.
    while ops:
        a, op, b = numbers[0], ops[0], numbers[1]
        value = _apply(a, op, b) if slip is None else slip(_apply(a, op, b))
        steps.append(f"{a}{op}{b}={value}")
        numbers[0:2] = [value]
        del ops[0]
        largest = max(largest, abs(value))
    return numbers[0], tuple(steps), largest


def make_problem(rng: random.Random, num_ops: int, *, max_operand: int = 9, max_abs: int = 99) -> Problem:
    """One problem with exactly `num_ops` operations, drawn with `rng` (rejection-sampled to keep |values| <=
    max_abs)."""
    if not MIN_OPS <= num_ops <= MAX_OPS:
        raise ValueError(f"num_ops must be between {MIN_OPS} and {MAX_OPS}, got {num_ops}.")
    for _ in range(10_000):
        numbers = [rng.randint(1, max_operand) for _ in range(num_ops + 1)]
        ops = [rng.choice(OPS) for _ in range(num_ops)]
        answer, steps, largest = solve(numbers, ops)
        if largest <= max_abs:
            expression = "".join(f"{n}{op}" for n, op in zip(numbers, ops)) + str(numbers[-1])
            return Problem(expression=expression, answer=answer, steps=steps, numbers=tuple(numbers),
                           ops=tuple(ops))
    raise RuntimeError(f"could not draw a {num_ops}-operation problem with values within {max_abs}")


def make_problems(n: int, seed: int, *, difficulties: tuple[int, ...] = (1, 2, 3, 4),
                  exclude: set[str] | frozenset[str] = frozenset(), distinct: bool = True) -> list[Problem]:
    """`n` problems, difficulties cycling through `difficulties` (balanced), none of whose expression is in `exclude`
    (used to keep the held-out evaluation set disjoint from training). With `distinct`, no expression repeats (there
    are only 243 one-operation problems, so large training sets use `distinct=False`)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    if not difficulties or any(not MIN_OPS <= d <= MAX_OPS for d in difficulties):
        raise ValueError(f"difficulties must be numbers of operations in [{MIN_OPS}, {MAX_OPS}], got {difficulties}.")
    rng = random.Random(seed)
    seen = set(exclude)
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 10_000:
            raise RuntimeError(f"could not draw {n} distinct problems for difficulties {difficulties}")
        problem = make_problem(rng, difficulties[len(problems) % len(difficulties)])
        if problem.expression in seen:
            continue
        if distinct:
            seen.add(problem.expression)
        problems.append(problem)
    return problems


def slipped_solution(problem: Problem, rng: random.Random, slip_rate: float) -> str:
    """A worked solution by a teacher that slips: each step's result is off by one of `SLIP_OFFSETS` with
    probability `slip_rate`, and later steps (and the boxed answer) use the wrong value, as a real mistake would.
    With `slip_rate=0` this is `problem.solution_text`."""
    if not 0.0 <= slip_rate <= 1.0:
        raise ValueError(f"slip_rate must be between 0 and 1, got {slip_rate}.")
    if not problem.numbers:
        raise ValueError("this Problem was built without its numbers and operators; use make_problem(s).")

    def slip(value: int) -> int:
        return value + rng.choice(SLIP_OFFSETS) if rng.random() < slip_rate else value

    answer, steps, _ = solve(list(problem.numbers), list(problem.ops), slip=slip)
    return "\n".join([*steps, f"\\boxed{{{answer}}}"])


def to_rl_rows(problems: list[Problem]) -> list[dict]:
    """Rows for a (GRPO/DisCO) trainer: a conversational prompt, the `solution` column the reward reads
    (the answer in `\\boxed{}`, as in MATH-style datasets), and the difficulty for per-level statistics."""
    return [
        {
            "prompt": [{"role": "user", "content": p.prompt_text}],
            "solution": f"\\boxed{{{p.answer}}}",
            "num_ops": p.num_ops,
        }
        for p in problems
    ]


def corpus(problems: list[Problem]) -> list[str]:
    """Text the tokenizer is trained on: prompts and worked solutions."""
    return [t for p in problems for t in (p.prompt_text, p.solution_text)]
