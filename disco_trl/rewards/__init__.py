r"""Rewards for verifiable math, and the checks DisCO makes on what reward functions receive and return.

    from disco_trl.rewards import boxed_math_reward
    trainer = DiscoTrainer(..., reward_funcs=boxed_math_reward)

* `math_reward`: `boxed_math_reward` and `BoxedMathReward`, TRL reward functions (1.0 when the last ``\boxed{}``
  equals the reference);
* `number_reward`: `last_number_reward`, for answers given as a plain number (1.0 when the completion's last number
  equals the reference; GSM8K-style, used by the real-model demo);
* `extraction`: a completion's text and its last ``\boxed{}``; `grading`: answers against references (fast path,
  then math-verify); `pool`: math-verify in killable worker processes with a hard deadline; `grader_worker`: the
  worker itself;
* `checks`: a reward function's columns and return value, and the watch for batches DisCO cannot learn from.
"""

from .extraction import completion_text, extract_boxed_answer
from .grading import grade_answers
from .math_reward import BoxedMathReward, boxed_math_reward
from .number_reward import extract_last_number, last_number_reward
from .pool import MathGraderPool, shutdown_grader_pool


__all__ = [
    "boxed_math_reward",
    "last_number_reward",
    "extract_last_number",
    "extract_boxed_answer",
    "completion_text",
    "grade_answers",
    "BoxedMathReward",
    "MathGraderPool",
    "shutdown_grader_pool",
]
