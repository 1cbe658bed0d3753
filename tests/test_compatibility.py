"""docs/compatibility.md lists every GRPOConfig field and GRPOTrainer argument of the pinned TRL, and every option it
calls refused is refused by DiscoConfig with a message about that option."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from transformers import TrainingArguments
from trl import GRPOConfig, GRPOTrainer

from disco_trl import DiscoConfig
from disco_trl.config import GRPO_LOSS_OPTIONS


DOC = Path(__file__).parent.parent / "docs" / "compatibility.md"


def table_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `([a-z_0-9]+)` \| (.+) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def grpo_fields() -> list[str]:
    """GRPOConfig's own fields, and the TrainingArguments fields whose default it changes."""
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    names = []
    for f in dataclasses.fields(GRPOConfig):
        if f.name not in base or f.default != base[f.name].default:
            names.append(f.name)
    return names


def test_every_grpo_option_and_argument_is_in_the_table():
    rows = table_rows()
    arguments = [p for p in inspect.signature(GRPOTrainer.__init__).parameters if p != "self"]
    missing = [name for name in grpo_fields() + arguments if name not in rows]
    assert not missing, f"add these to docs/compatibility.md: {missing}"
    assert len(grpo_fields()) >= 80  # the pinned TRL has 77 own fields + 5 changed defaults


def test_refused_rows_match_the_refusals():
    rows = table_rows()
    refused_in_doc = {name for name, text in rows.items() if text.startswith("refused")}
    assert refused_in_doc == set(GRPO_LOSS_OPTIONS) | {"beta"}


def _other_value(neutral):
    if isinstance(neutral, bool):
        return not neutral
    if neutral is None:
        return 0.3
    if isinstance(neutral, (int, float)):
        return neutral + 1
    return {"dapo": "grpo", "token": "sequence", "group": "none", "sequence_mask": "token_truncate"}[neutral]


@pytest.mark.parametrize("name", sorted(GRPO_LOSS_OPTIONS))
def test_each_refusal_is_about_its_own_option(tmp_path, name):
    neutral, _ = GRPO_LOSS_OPTIONS[name]
    assert getattr(DiscoConfig(output_dir=str(tmp_path)), name) == neutral  # the neutral value is the default
    with pytest.raises(ValueError) as error:
        DiscoConfig(output_dir=str(tmp_path), **{name: _other_value(neutral)})
    message = str(error.value)
    assert message.startswith(f"DiscoConfig.{name}=") and "compatibility.md" in message
    if "entropy" not in name:
        assert "entropy" not in message.lower(), message  # e.g. the off-policy mask is not about entropy
