"""Values and inputs that TRL or transformers accept but that fail, train nothing or silently do something else
after the model has loaded: refused with one line naming the setting and its fix, from Python (`DiscoConfig`,
`DiscoTrainer`) and from the script (before any model loads)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
from disco_testing import parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from peft import LoraConfig
from test_scripts import parse, run_main, tiny_run_args

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.scripts import train as train_script


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
    # finite in Python, but 0 or inf in the float32 the objective is computed in: NaN weights
    ("tau", 1e39, "DiscoConfig.tau=1e+39 is outside what float32 training can represent"),
    ("tau", 1e-46, "DiscoConfig.tau=1e-46 is outside what float32 training can represent"),
    ("tau", 1e-40, "DiscoConfig.tau=1e-40 is outside"),  # float32 subnormal: s / tau overflows
    ("kl_beta", 1e39, "DiscoConfig.kl_beta=1e+39 is outside what float32 training can represent"),
    ("kl_delta", 1e-40, "DiscoConfig.kl_delta=1e-40 is outside"),
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
                                        ("kl_beta", 0.0), ("kl_delta", 0.0), ("temperature", 1e-3), ("tau", 1e8),
                                        ("tau", 1.2e-38), ("kl_beta", 3e38)])
def test_config_accepts_the_limits(tmp_path, name, value):
    assert getattr(config(tmp_path, **{name: value}), name) == value


@pytest.mark.parametrize("flag,value,message", [
    ("--learning_rate", "-1", "DiscoConfig.learning_rate=-1.0 must be a finite number >= 0"),
    ("--tau", "inf", "DiscoConfig.tau must be > 0 and finite (got inf)"),
    ("--tau", "1e39", "DiscoConfig.tau=1e+39 is outside what float32 training can represent"),
    ("--kl_beta", "1e39", "DiscoConfig.kl_beta=1e+39 is outside what float32 training can represent"),
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


# --------------------------------------------------------------- the script: one line, exit 2, the model never loads
@pytest.fixture(scope="module")
def unloadable_model_dir(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir with its weights replaced by garbage: config and tokenizer read fine, loading the weights fails
    with a traceback. A refusal that comes out as one line therefore came before the model loaded."""
    path = tmp_path_factory.mktemp("unloadable") / "model"
    shutil.copytree(tiny_model_dir, path)
    (path / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 8)
    return path


@pytest.fixture(scope="module")
def long_prompt_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    rows = [{"problem": f"Compute {a} + 1.", "answer": str(a + 1)} for a in range(8)]
    rows[3]["problem"] = "Compute " + " + ".join(["1"] * 1500) + "."  # ~3000 tokens; the model has 512 positions
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _holding(folder):
    """A live process (not this one) holding `folder` as a run does."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from disco_trl.preflight import FolderLock; "
        f"FolderLock({str(folder)!r}, 'a training run (test holder)').acquire(); print('held', flush=True); "
        "time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


BAD_SCRIPT_SETTINGS = [
    # (extra arguments, words the one line must contain)
    (["--num_iterations", "0"], "DiscoConfig.num_iterations=0 must be a whole number >= 1"),
    (["--num_train_epochs", "0", "--max_steps", "-1"], "DiscoConfig.num_train_epochs=0.0 with max_steps=-1 trains"),
    (["--top_p", "1.5"], "DiscoConfig.top_p=1.5 must be in (0, 1]"),
    (["--top_p", "0"], "DiscoConfig.top_p=0.0 must be in (0, 1]"),
    (["--per_device_train_batch_size", "0"], "DiscoConfig.per_device_train_batch_size=0 must be a whole number >= 1"),
    (["--gradient_accumulation_steps", "0"], "DiscoConfig.gradient_accumulation_steps=0 must be a whole number >= 1"),
    (["--steps_per_generation", "0"], "DiscoConfig.steps_per_generation=0 must be a whole number >= 1"),
    (["--dataset_limit", "0"], "dataset_limit=0 keeps no question"),
    (["--dataset_limit", "3"], "train_dataset has 3 questions, fewer than one generation batch of 4"),
    (["--use_peft", "--lora_target_modules", "q_proj", "qq_proj"], "LoRA target module(s) ['qq_proj'] ("),
    (["--use_peft", "--lora_target_modules", "attention"], "LoRA target module(s) ['attention'] ("),
    (["--use_peft", "--lora_r", "0"], "LoRA rank r=0 (lora_r)"),
    (["LONG_PROMPTS"], "1 of 8 prompts do not fit the model with max_completion_length=8"),
    (["--config", "MISSING"], "could not read the --config file"),
    (["--config", "BROKEN"], "could not read the --config file"),
    (["--generation_batch_size", "0"], "DiscoConfig.generation_batch_size=0 must be a whole number >= 1"),
    (["--resume_from_checkpoint", "RUN_FOLDER"], "is a run's output folder, not a checkpoint"),
    (["--resume_from_checkpoint", "SAVED_MODEL"], "holds a saved model but no optimizer state"),
    (["FOLDER_IN_USE"], "is in use by a training run (test holder)"),
    # transformers 5 builds an empty tokenizer from such a folder: the run failed at its first generation
    (["NO_TOKENIZER"], "has no tokenizer files (tokenizer.json, tokenizer_config.json, ...)"),
    # TRL calls rewards with keywords (prompts, completion_ids, ... and the columns): a TypeError after generating
    (["--reward_funcs", "test_config_refusals.reward_without_kwargs"],
     "Reward function `reward_without_kwargs` does not accept the keyword argument(s) ['prompts', 'completion_ids'"),
    (["--config"], "--config needs the path of a YAML recipe"),
]


@pytest.mark.parametrize("extra,message", BAD_SCRIPT_SETTINGS,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_each_bad_setting_is_one_line_and_exit_2_before_the_model_loads(
        unloadable_model_dir, math_jsonl, long_prompt_jsonl, tmp_path, capsys, extra, message):
    out, data, holder, model = tmp_path / "out", math_jsonl, None, unloadable_model_dir
    if extra == ["LONG_PROMPTS"]:
        extra, data = [], long_prompt_jsonl
    if extra == ["NO_TOKENIZER"]:  # the model's config and weights, without its tokenizer's files
        extra, model = [], tmp_path / "no-tokenizer"
        model.mkdir()
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(unloadable_model_dir / name, model / name)
    if extra == ["FOLDER_IN_USE"]:
        extra, holder = [], _holding(out)
    (tmp_path / "broken.yaml").write_text("learning_rate: [1e-6\n")
    (tmp_path / "earlier" / "checkpoint-1").mkdir(parents=True)
    saved = tmp_path / "finished"  # what a finished run leaves: the model and trainer_state.json, no optimizer
    shutil.copytree(unloadable_model_dir, saved)
    (saved / "trainer_state.json").write_text("{}")
    names = {"MISSING": str(tmp_path / "missing.yaml"), "BROKEN": str(tmp_path / "broken.yaml"),
             "RUN_FOLDER": str(tmp_path / "earlier"), "SAVED_MODEL": str(saved)}
    try:
        code, _, err = run_main(tiny_run_args(model, data, out, *[names.get(a, a) for a in extra]), capsys)
    finally:
        if holder is not None:
            holder.kill()
    assert code == 2, err
    assert err.startswith("disco-trl train: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert holder is not None or not out.exists()


def reward_without_kwargs(completions):  # TRL's reward signature needs **kwargs
    return [0.0 for _ in completions]


def test_the_script_refuses_an_infinite_reward_in_one_line(tiny_model_dir, math_jsonl, tmp_path, capsys):
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "out",
                         "--reward_funcs", "test_scripts.infinite_reward")
    code, _, err = run_main(args, capsys)
    assert code == 1, err
    *_, last = re.split(r"[\r\n]", err.rstrip("\n"))  # after the model's loading bars
    assert last.startswith("disco-trl train: error: Reward function `infinite_reward` returned inf for 1 of 16"), err
    assert "Traceback" not in err


def test_a_yaml_string_reward_is_one_reward_function(tmp_path, math_jsonl, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("reward_funcs: boxed_math_reward\nkeep_columns: difficulty\n")
    script_args, training_args, model_args = parse([*tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o"),
                                                    "--config", str(recipe)])
    assert script_args.reward_funcs == ["boxed_math_reward"] and script_args.keep_columns == ["difficulty"]
    _, rewards, dataset = train_script.prepare(script_args, training_args, model_args)
    assert [r.__name__ for r in rewards] == ["boxed_math_reward"] and "difficulty" in dataset.column_names


# ---------------------------------------------------------------------- the same inputs refused by DiscoTrainer
def _trainer(tmp_path, dataset=None, **kwargs):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    return DiscoTrainer(model, parity_reward, short_run_config(tmp_path), dataset or prompt_dataset(),
                        processing_class=tokenizer, **kwargs)


def test_trainer_refuses_a_training_set_smaller_than_a_generation_batch(tmp_path):
    with pytest.raises(ValueError, match="train_dataset has 1 questions, fewer than one generation batch of 4"):
        _trainer(tmp_path, prompt_dataset(1))


@pytest.mark.parametrize("targets, unmatched",
                         [(["q_proj", "qq_proj"], "['qq_proj']"), (["attention"], "['attention']")])
def test_trainer_refuses_lora_targets_the_model_lacks(tmp_path, targets, unmatched):
    with pytest.raises(ValueError, match=re.escape(f"LoRA target module(s) {unmatched} (lora_target_modules)")):
        _trainer(tmp_path, peft_config=LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))


def test_trainer_refuses_a_prompt_longer_than_the_model_takes(tmp_path):
    dataset = prompt_dataset(8).map(lambda row, i: {"prompt": row["prompt"] + " 1" * 600 if i == 5 else row["prompt"]},
                                    with_indices=True)
    with pytest.raises(ValueError, match="1 of 8 prompts do not fit the model with max_completion_length=8"):
        _trainer(tmp_path, dataset)


def test_trainer_refuses_a_model_folder_without_tokenizer_files_before_its_weights_load(unloadable_model_dir,
                                                                                        tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):  # garbage weights: loading them would fail otherwise
        shutil.copy(unloadable_model_dir / name, folder / name)
    with pytest.raises(ValueError, match=r"model='.*no-tokenizer' has no tokenizer files"):
        DiscoTrainer(str(folder), parity_reward, short_run_config(tmp_path / "out"), prompt_dataset())
