"""The real-model demo's task: two-digit addition word problems, answered with just the number.

    Sam has 59 stickers and gets 63 more. How many stickers does Sam have now?      ->  122

A question adds two numbers from 10 to 99, told as a short story (a few templates, names and objects), so the sum has
two or three digits and needs a carry about half the time. The system message asks for just the number; the reward is
`disco_trl.rewards.last_number_reward` (the last number of the reply against the `solution` column), so an answer
such as "59 + 63 = 122." counts as right and a reply that never gets to the sum does not. SmolLM2-135M-Instruct
solves a part of these (its sums are often off by one or ten, and it often restates the question instead of
answering): questions on which some of its samples are right and some wrong, which is what DisCO learns from.

The held-out questions are a fixed pool (`held_out(n)`, at most `HELD_OUT` = 300), drawn from their own seed; training
questions (`training(n, seed)`) never use a held-out pair of numbers. Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


SYSTEM_PROMPT = "Answer with just the number."
TEMPLATES = (
    "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "A box holds {a} {things}. {name} puts in {b} more. How many {things} are in the box?",
    "{name} had {a} {things} on Monday and {b} on Tuesday. How many {things} is that in all?",
    "There are {a} {things} on one shelf and {b} on another. How many {things} are there altogether?",
)
NAMES = ("Sam", "Anna", "Tom", "Lily", "Ben", "Mia", "Leo", "Emma")
THINGS = ("apples", "books", "stickers", "marbles", "coins", "pencils", "cards", "shells")
LOW, HIGH = 10, 99
HELD_OUT = 300  # size of the held-out pool
HELD_OUT_SEED = 31337


@dataclass(frozen=True)
class WordProblem:
    a: int
    b: int
    text: str

    @property
    def answer(self) -> int:
        return self.a + self.b

    @property
    def carry(self) -> bool:
        """Whether the ones digits carry (the harder half)."""
        return self.a % 10 + self.b % 10 >= 10

    @property
    def kind(self) -> str:
        return "carry" if self.carry else "no carry"

    @property
    def messages(self) -> list[dict]:
        """The chat prompt: the system message asking for just the number, then the question."""
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.text}]


def draw(rng: random.Random) -> WordProblem:
    a, b = rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)
    text = rng.choice(TEMPLATES).format(name=rng.choice(NAMES), things=rng.choice(THINGS), a=a, b=b)
    return WordProblem(a, b, text)


def _draw_many(n: int, seed: int, exclude: frozenset = frozenset()) -> list[WordProblem]:
    rng, seen, problems = random.Random(seed), set(exclude), []
    while len(problems) < n:
        problem = draw(rng)
        if (problem.a, problem.b) not in seen:
            seen.add((problem.a, problem.b))
            problems.append(problem)
    return problems


def held_out(n: int) -> list[WordProblem]:
    """The first `n` questions of the fixed held-out pool (distinct pairs of numbers)."""
    if not 1 <= n <= HELD_OUT:
        raise ValueError(f"between 1 and {HELD_OUT} held-out questions are reserved; got {n}.")
    return _draw_many(HELD_OUT, HELD_OUT_SEED)[:n]


def training(n: int, seed: int) -> list[WordProblem]:
    """`n` training questions drawn with `seed` (distinct pairs), none using a pair of the held-out pool."""
    if n < 0 or n > (HIGH - LOW + 1) ** 2 - HELD_OUT:
        raise ValueError(f"n must be between 0 and {(HIGH - LOW + 1) ** 2 - HELD_OUT}, got {n}.")
    reserved = frozenset((p.a, p.b) for p in _draw_many(HELD_OUT, HELD_OUT_SEED))
    return _draw_many(n, 1000 + seed, exclude=reserved)


def to_rl_rows(problems: list[WordProblem]) -> list[dict]:
    """Rows for a (GRPO/DisCO) trainer: the chat prompt and the `solution` column `last_number_reward` reads."""
    return [{"prompt": p.messages, "solution": str(p.answer)} for p in problems]
