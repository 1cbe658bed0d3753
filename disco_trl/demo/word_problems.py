"""The real-model demo's task: two-digit addition word problems, answered with just the number.

    system:     Answer with just the number.
    user:       Sam has 59 stickers and gets 63 more. How many stickers does Sam have now?
    assistant:  59 + 63 =                      <- the prompt ends here; the model writes " 122" and stops

A question adds two numbers from 10 to 99, told as a short story (a few templates, names and objects), so the sum has
two or three digits and needs a carry about half the time. The prompt (`prompt_text`) is the chat rendered by the
model's own template, with the assistant's reply started with the sum to compute: what the model must produce is the
sum, and then stop. The reward is `disco_trl.rewards.last_number_reward` (the last number of the reply against the
`solution` column), so " 122" and " 122 stickers." are right, and " 122\nSam had 59" (a reply that goes on) is not.

Why the reply is started for the model: asked the question alone, SmolLM2-135M-Instruct explains at length ("To add
97 and 74, we need to ...") and gets to a number within 24 tokens for about 3% of questions (measured on 32 held-out
questions, 4 samples each at T=0.6); with the reply started, 37% of its samples are right and 47% of the questions
have both right and wrong samples (greedy: 47% right), which is what DisCO learns from; and a reply of a few tokens
keeps the CPU run short.

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
        """The chat: the system message asking for just the number, then the question."""
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.text}]

    @property
    def reply_start(self) -> str:
        return f"{self.a} + {self.b} ="


def prompt_text(tokenizer, problem: WordProblem) -> str:
    """The prompt: the chat rendered with `tokenizer`'s chat template, ending with the started reply."""
    chat = tokenizer.apply_chat_template(problem.messages, tokenize=False, add_generation_prompt=True)
    return chat + problem.reply_start


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


def to_rl_rows(tokenizer, problems: list[WordProblem]) -> list[dict]:
    """Rows for a (GRPO/DisCO) trainer: the prompt (text, already in the chat format) and the `solution` column
    `last_number_reward` reads."""
    return [{"prompt": prompt_text(tokenizer, p), "solution": str(p.answer)} for p in problems]
