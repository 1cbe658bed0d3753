"""Values that TRL or transformers accept but that fail (or silently do something else) after the model has loaded:
`DiscoConfig` refuses them, with one line naming the field and its fix, both from Python and from the script."""

from __future__ import annotations

import math

import pytest
from test_scripts import run_main, tiny_run_args

from disco_trl import DiscoConfig


INF, NAN = math.inf, math.nan

REFUSED = [
    # (field, value, words the message must contain)
    ("max_steps", 0, "DiscoConfig.max_steps=0: set the number of optimizer updates (> 0), or -1"),
    ("max_steps", -2, "DiscoConfig.max_steps=-2"),
    ("tau", INF, "DiscoConfig.tau must be > 0 and finite (got inf)"),
    ("tau", NAN, "DiscoConfig.tau must be > 0 and finite (got nan)"),
    ("kl_delta", INF, "DiscoConfig.kl_delta must be >= 0 and finite (got inf)"),
    ("kl_beta", INF, "DiscoConfig.kl_beta must be >= 0 and finite (got inf)"),
    ("kl_beta", NAN, "DiscoConfig.kl_beta must be >= 0 and finite (got nan)"),
    ("learning_rate", -1.0, "DiscoConfig.learning_rate=-1.0 must be a finite number >= 0"),
    ("learning_rate", INF, "DiscoConfig.learning_rate=inf"),
    ("temperature", 0.0, "DiscoConfig.temperature=0.0: DisCO samples its completions"),
    ("temperature", -0.5, "the sampling temperature must be a finite number > 0"),
    ("max_completion_length", 0, "DiscoConfig.max_completion_length=0 must be a positive number of tokens"),
    ("max_completion_length", -8, "DiscoConfig.max_completion_length=-8"),
]


def config(tmp_path, **overrides) -> DiscoConfig:
    kwargs = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_generations=4,
                  per_device_train_batch_size=4)
    kwargs.update(overrides)
    return DiscoConfig(**kwargs)


@pytest.mark.parametrize("name,value,message", REFUSED, ids=lambda v: str(v))
def test_config_refuses_a_value_that_would_fail_after_the_model_loads(tmp_path, name, value, message):
    with pytest.raises(ValueError) as err:
        config(tmp_path, **{name: value})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,value", [("max_steps", -1), ("max_steps", 3), ("learning_rate", 0.0),
                                        ("kl_beta", 0.0), ("kl_delta", 0.0), ("temperature", 1e-3)])
def test_config_accepts_the_limits(tmp_path, name, value):
    assert getattr(config(tmp_path, **{name: value}), name) == value


@pytest.mark.parametrize("flag,value,message", [
    ("--learning_rate", "-1", "DiscoConfig.learning_rate=-1.0 must be a finite number >= 0"),
    ("--tau", "inf", "DiscoConfig.tau must be > 0 and finite (got inf)"),
    ("--temperature", "0", "DiscoConfig.temperature=0.0"),
    ("--max_steps", "0", "DiscoConfig.max_steps=0"),
    ("--max_completion_length", "0", "DiscoConfig.max_completion_length=0"),
])
def test_script_refuses_the_value_in_one_line_before_the_model_loads(tmp_path, capsys, flag, value, message):
    # The model does not exist: had the refusal come later, the message would be about the model.
    args = tiny_run_args(tmp_path / "no-model", tmp_path / "no-data.jsonl", tmp_path / "out", flag, value)
    code, _, err = run_main(args, capsys)
    assert code == 2
    assert err.startswith("disco-trl train: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ whole groups: DisCO's message, not TRL's
def test_batch_that_cannot_hold_whole_groups_gets_discos_message_not_trls(tmp_path):
    # TRL would first complain that generation_batch_size (6), which it derives and the user never set, is not a
    # multiple of num_generations.
    with pytest.raises(ValueError) as err:
        config(tmp_path, per_device_train_batch_size=6)
    message = str(err.value)
    assert "per_device_train_batch_size=6 x gradient_accumulation_steps=1 = 6 completions" in message
    assert "cannot hold whole groups of num_generations=4" in message and "gradient_accumulation_steps=2" in message
    assert "generation_batch_size" not in message


def test_steps_per_generation_that_splits_an_update_gets_discos_message(tmp_path):
    # Groups of 4 span 2 micro-steps of 2; steps_per_generation=3 would end a generation batch inside an update.
    with pytest.raises(ValueError) as err:
        config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, steps_per_generation=3)
    message = str(err.value)
    assert "steps_per_generation=3 must then be a multiple of gradient_accumulation_steps=2" in message
    assert "generation_batch_size" not in message


def test_script_reports_discos_whole_groups_message_without_generation_batch_size(tmp_path, capsys):
    args = tiny_run_args(tmp_path / "no-model", tmp_path / "no-data.jsonl", tmp_path / "out",
                         "--per_device_train_batch_size", "6", "--gradient_accumulation_steps", "1")
    at = args.index("--generation_batch_size")
    del args[at : at + 2]  # unset: TRL derives it from the batch
    code, _, err = run_main(args, capsys)
    assert code == 2
    assert "cannot hold whole groups of num_generations=4" in err and "generation_batch_size" not in err
