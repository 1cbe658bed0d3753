"""Checks on what reward functions receive and return, and a watch for batches DisCO cannot learn from.

TRL calls reward functions deep inside generation; a reward function that needs a missing column, or returns a
string or a bare float, otherwise fails there with a traceback that does not name it. And a reward that never puts
a question's completions on both sides of the threshold makes DisCO learn nothing without any error at all.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import numbers
from collections.abc import Sequence

import torch
from trl.trainer.utils import get_callable_name, is_async_callable


logger = logging.getLogger(__name__)

# Keyword arguments TRL passes to reward functions besides the dataset's columns (`environments` only with an
# environment_factory); the dataset columns it does not pass on (it passes `prompts` and `completions` instead).
_TRL_REWARD_KWARGS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                      "environments"}
_ALWAYS_PASSED = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
_COLUMNS_NOT_PASSED = {"prompt", "completion", "completion_ids"}


def _as_list(reward_funcs) -> list:
    if reward_funcs is None:
        return []
    return list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]


def _is_python_reward(func) -> bool:
    return callable(func) and not isinstance(func, (str, torch.nn.Module))


def check_reward_columns(reward_funcs, dataset) -> None:
    """Fail before any model is loaded when a reward function cannot take what TRL passes it: every keyword TRL
    passes (`prompts`, `completions`, `completion_ids`, `trainer_state`, `log_extra`, `log_metric` and each dataset
    column but `prompt`) must be accepted, by name or by **kwargs, and every parameter it needs must be among them.

    Either mistake would otherwise surface as a TypeError after the first generation batch has been sampled.
    """
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):  # a DatasetDict: TRL refuses it itself
        return
    passed_columns = None if columns is None else [c for c in columns if c not in _COLUMNS_NOT_PASSED]
    for func in _as_list(reward_funcs):
        if not _is_python_reward(func):
            continue  # reward models: TRL checks their inputs itself
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            continue
        _check_accepts_trls_keywords(func, parameters, passed_columns or [])
        if passed_columns is not None:  # an iterable dataset without features: its columns are unknown
            _check_needed_columns(func, parameters, columns, passed_columns)


class RewardSignatureError(ValueError):
    """A reward function whose parameters cannot take the keywords TRL calls it with."""


def _check_accepts_trls_keywords(func, parameters, passed_columns: list[str]) -> None:
    name = get_callable_name(func)
    positional_only = [p.name for p in parameters
                       if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) and not positional_only:
        return
    named = {p.name for p in parameters
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    unaccepted = [k for k in (*_ALWAYS_PASSED, *passed_columns) if k not in named]
    if positional_only or unaccepted:
        problem = (f"takes positional-only parameter(s) {positional_only}" if positional_only else
                   f"does not accept the keyword argument(s) {unaccepted}")
        raise RewardSignatureError(
            f"Reward function `{name}` {problem}, but TRL calls every reward function with keywords: prompts, "
            "completions, completion_ids, trainer_state, log_extra, log_metric and each dataset column. Give it a "
            f"**kwargs parameter, e.g. `def {name}(completions, **kwargs)`."
        )


def _check_needed_columns(func, parameters, columns, passed_columns: list[str]) -> None:
    required = [
        p.name for p in parameters
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in _TRL_REWARD_KWARGS
    ]
    missing = [name for name in required if name not in passed_columns]
    if missing:
        passed_instead = " (TRL passes the prompts as `prompts`)" if "prompt" in missing else ""
        raise ValueError(
            f"Reward function `{get_callable_name(func)}` needs the dataset column(s) {missing}, but the training "
            f"dataset has only {list(columns)}{passed_instead}. Add the column (for math rewards, the reference "
            "answer as `solution`; see disco_trl.data.load_math_dataset) or rename it with "
            "`dataset.rename_column(old, new)`."
        )


class RewardOutputError(TypeError, ValueError):
    """A reward function returned something DisCO cannot train on. The message (one line) names the function."""


def check_reward_output(name: str, output) -> None:
    """Raise one clear line when a reward function's return value is not one finite number (or None) per completion.

    NaN is accepted as "cannot score" (TRL's None); an infinite reward is refused: the completions of its question
    would all become negatives (inf - inf is NaN in the question's mean), silently.
    """
    problem = _malformed(output)
    if problem is not None:
        raise RewardOutputError(
            f"Reward function `{name}` returned {problem}; a reward function must return a list with one float (or "
            "None, for a completion it cannot score) per completion, e.g. `return [float(r) for r in rewards]`."
        )
    infinite = [float(v) for v in output if v is not None and math.isinf(float(v))]
    if infinite:
        raise RewardOutputError(
            f"Reward function `{name}` returned {sorted(set(infinite))[0]} for {len(infinite)} of {len(output)} "
            "completions: rewards must be finite (an infinite one makes every completion of its question a "
            "negative). Return a large finite number instead, or None for a completion it cannot score."
        )


def _malformed(output) -> str | None:
    """What is wrong with the shape of a reward function's return value, or None."""
    if isinstance(output, str | bytes):
        return f"a {type(output).__name__} ({output[:40]!r})"
    if isinstance(output, numbers.Number) or (isinstance(output, torch.Tensor) and output.ndim == 0):
        return f"a single number ({float(output)!r})"
    if not isinstance(output, Sequence | torch.Tensor) and not hasattr(output, "__array__"):
        return f"a {type(output).__name__}"
    for value in output:
        if value is None or isinstance(value, numbers.Number | bool):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            continue
        return f"a list holding a {type(value).__name__} ({value!r:.40})"
    return None


def with_output_check(func):
    """Wrap a Python reward function (sync or async) so that a malformed return value names the function."""
    if not _is_python_reward(func):
        return func
    name = get_callable_name(func)
    if is_async_callable(func):
        async def checked_async(*args, **kwargs):
            output = await func(*args, **kwargs)
            check_reward_output(name, output)
            return output

        checked = checked_async
    else:
        def checked_sync(*args, **kwargs):
            output = func(*args, **kwargs)
            check_reward_output(name, output)
            return output

        checked = checked_sync
    functools.update_wrapper(checked, func, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    checked.__name__ = name
    return checked


class NoSignalWatch:
    """Warns once, loudly, when `patience` consecutive generation batches have no question with both kinds."""

    def __init__(self, threshold, patience: int = 3):
        self.threshold = threshold
        self.patience = patience
        self.streak = 0
        self.values_seen: set[float] = set()
        self.warned = False

    def update(self, any_mixed: bool, rewards: torch.Tensor) -> None:
        if any_mixed:
            self.streak, self.values_seen = 0, set()
            return
        self.streak += 1
        finite = rewards[~torch.isnan(rewards)]
        self.values_seen.update(round(v, 4) for v in finite.unique()[:32].tolist())
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            logger.warning(self.message())

    def message(self) -> str:
        seen = sorted(self.values_seen)
        shown = ", ".join(f"{v:g}" for v in seen[:12]) + (", ..." if len(seen) > 12 else "")
        if self.threshold == "group_mean":
            why = "every question's completions got the same reward"
            fix = ("make the reward tell completions apart (a finer reward, harder or easier questions), or check "
                   "that the reward function reads the right answer column")
        else:
            why = f"no question had completions on both sides of reward_threshold={self.threshold}"
            fix = ("set `reward_threshold=\"group_mean\"` (positives: completions above their question's mean "
                   "reward), or a threshold between the rewards of right and wrong answers")
        return (
            f"\n{'!' * 100}\nDisCO IS LEARNING NOTHING: in the last {self.streak} generation batches {why} (rewards "
            f"seen: {shown or 'none'}), so no question has both positives and negatives and the discriminative "
            f"objective is 0 (only the KL penalty acts). To fix: {fix}.\n{'!' * 100}"
        )
