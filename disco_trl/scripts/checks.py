"""The training script's checks: everything that can fail on a run's inputs, found before any weights load.

Each raises `ScriptError` with one line naming the setting and its fix; `disco_trl.scripts.train.prepare` runs them
cheapest first. The checks on a run's data against its model (a training set of at least one generation batch, LoRA
targets that exist, prompts that fit the model's positions) are `disco_trl.preflight`'s, run here on the model's
config and tokenizer alone.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import torch
from transformers import AutoTokenizer, PretrainedConfig
from trl import ModelConfig, get_peft_config

from disco_trl import DiscoConfig, preflight
from disco_trl.checkpoints import CheckpointError, resolve_resume
from disco_trl.data import load_math_dataset
from disco_trl.geometry import BatchGeometry, check_expected_questions
from disco_trl.rewards import boxed_math_reward
from disco_trl.rewards.checks import RewardSignatureError, check_reward_columns
from disco_trl.vllm_support import VLLMUnavailable, check_vllm_can_run


class ScriptError(Exception):
    """A problem with the inputs of a run, found before any compute is spent. The message says what to change."""


# ----------------------------------------------------------------------------------------------------- batch geometry
def check_batch_geometry(
    script_args, args: DiscoConfig, num_processes: int | None = None
) -> BatchGeometry:
    """The launch's geometry, checked against the recipe's expected questions per generation and per update.

    (Whole groups per process are checked by `DiscoConfig` itself, when the arguments are parsed.)
    """
    geometry = BatchGeometry.from_args(args, num_processes)
    try:
        check_expected_questions(geometry, script_args.expected_questions_per_generation,
                                 script_args.expected_questions_per_update)
    except ValueError as err:
        raise ScriptError(str(err)) from None
    return geometry


# ------------------------------------------------------------------------------------------------------------ checks
def check_vllm(args: DiscoConfig, model: str | None = None) -> None:
    """`use_vllm` needs a vLLM that can run here (disco_trl.vllm_support: installed, a device it runs on, a model it
    serves), gathered weights, and for server mode a CUDA device (TRL pushes weights to the server over NCCL)."""
    if not args.use_vllm:
        return
    try:
        check_vllm_can_run(args, model)
    except VLLMUnavailable as err:
        raise ScriptError(str(err)) from err
    if args.vllm_mode == "server" and (args.use_cpu or not torch.cuda.is_available()):
        raise ScriptError(
            "vllm_mode='server' needs a CUDA device in the training process: TRL pushes the weights to the server "
            "over NCCL (VLLMClient.init_communicator). On a machine without a GPU use vllm_mode='colocate' (vLLM's "
            "CPU build, docs/training.md)."
        )
    if not args.ds3_gather_for_generation:
        raise ScriptError(
            "ds3_gather_for_generation=False cannot be used with vLLM (TRL syncs full weights into vLLM); set it to "
            "True, or drop use_vllm."
        )


_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def check_model(model_args: ModelConfig, args: DiscoConfig) -> PretrainedConfig:
    """The model's config: the model must be a local directory saved with `save_pretrained`, or a model id the Hub can
    resolve (its config is a few kB: resolved now rather than failing after the dataset is prepared)."""
    name = model_args.model_name_or_path
    if not name:
        raise ScriptError(
            "model_name_or_path is not set: pass a Hub id (e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B) or a local "
            "directory saved with save_pretrained (in the recipe or as --model_name_or_path)."
        )
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise ScriptError(
                f"model_name_or_path={name!r} is a directory without config.json: point it at a directory written by "
                "model.save_pretrained(...) (with its tokenizer), or at a Hub id."
            )
        return _model_config(name, model_args, args)
    if os.path.exists(path):
        raise ScriptError(
            f"model_name_or_path={name!r} is a file; it must be a model directory (save_pretrained) or a Hub id."
        )
    if name.startswith(_LOCAL_PREFIXES) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ScriptError(
            f"model_name_or_path={name!r} does not exist: no such directory (and it is not a Hub id of the form "
            "'organisation/model'). Check the path, or save the model there first with save_pretrained."
        )
    return _model_config(name, model_args, args)


def _model_config(name: str, model_args: ModelConfig, args: DiscoConfig) -> PretrainedConfig:
    try:
        return preflight.model_config(name, args, revision=model_args.model_revision)
    except (OSError, ValueError) as err:
        where = "from its config.json" if os.path.isdir(os.path.expanduser(name)) else "on the Hugging Face Hub"
        raise ScriptError(
            f"model_name_or_path={name!r} could not be resolved {where} (revision {model_args.model_revision!r}): "
            f"{' '.join(str(err).split())}"
        ) from err


def resolve_resume_setting(args: DiscoConfig) -> None:
    """`resume_from_checkpoint`: a checkpoint directory, or `last` (also `true`) for the newest complete one in
    output_dir. Without it, an output_dir holding an earlier run's checkpoints is refused unless overwrite_output_dir
    (the rules: disco_trl.checkpoints)."""
    value = args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        value = None
    elif str(value).lower() in ("last", "true"):
        value = True
    try:
        args.resume_from_checkpoint = resolve_resume(args, value, args.world_size, args.process_index)
    except CheckpointError as err:
        raise ScriptError(str(err)) from err


def load_reward_funcs(names: list[str]) -> list[Any]:
    """Resolve reward names: `boxed_math_reward`, or dotted import paths to functions with TRL's reward signature."""
    if not names:
        raise ScriptError("reward_funcs is empty: DisCO needs a reward to split completions into positives and "
                          "negatives (use boxed_math_reward for math).")
    registry = {"boxed_math_reward": boxed_math_reward}
    funcs = []
    for name in names:
        if name in registry:
            funcs.append(registry[name])
            continue
        if "." not in name:
            raise ScriptError(
                f"reward function {name!r} is unknown: use one of {sorted(registry)} or a dotted import path "
                "such as my_package.rewards.my_reward."
            )
        module_name, func_name = name.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())  # as TRL's scripts do: rewards defined next to the recipe
        try:
            funcs.append(getattr(importlib.import_module(module_name), func_name))
        except (ImportError, AttributeError) as err:
            raise ScriptError(f"could not import reward function {name!r}: {err}") from err
    return funcs


def load_train_dataset(script_args, reward_funcs: list[Any]):
    """Load the training set with `disco_trl.data.load_math_dataset`; check it has what the rewards read."""
    source = script_args.dataset_name
    try:
        dataset = load_math_dataset(
            source,
            script_args.dataset_train_split,
            conversational=script_args.conversational,
            limit=script_args.dataset_limit,
            question_field=script_args.question_field,
            answer_field=script_args.answer_field,
            solution_field=script_args.solution_field,
            system_prompt=script_args.system_prompt,
            keep_columns=script_args.keep_columns,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise ScriptError(
            f"could not load the training set dataset_name={source!r}: {err} (script options: --question_field, "
            "--answer_field, --solution_field, --keep_columns)"
        ) from err
    # load_math_dataset always makes `prompt` and `solution` (what boxed_math_reward reads); custom rewards may read
    # other columns, which must be carried over from the source.
    try:
        check_reward_columns(reward_funcs, dataset)
    except RewardSignatureError as err:
        raise ScriptError(str(err)) from err
    except ValueError as err:
        raise ScriptError(
            f"{err} With this script, carry a field of dataset_name={source!r} over with --keep_columns NAME."
        ) from err
    return dataset


def check_script_arguments(script_args) -> None:
    """The script's own options: a dataset limit that keeps questions."""
    if script_args.dataset_limit is not None and script_args.dataset_limit < 1:
        raise ScriptError(
            f"dataset_limit={script_args.dataset_limit} keeps no question: set a number >= 1, or leave it unset for "
            "the whole training set."
        )


def check_inputs_against_model(config: PretrainedConfig, dataset, model_args: ModelConfig, args: DiscoConfig) -> None:
    """The training set against the run and the model, on the model's config and tokenizer (no weights): at least one
    generation batch of questions, LoRA targets that exist, a tokenizer that is not empty, prompts that fit the model's
    positions."""
    peft_config = get_peft_config(model_args)
    try:
        preflight.check_dataset_size(dataset, args)
        if peft_config is not None:
            preflight.check_lora_targets(config, peft_config)
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                  trust_remote_code=args.trust_remote_code)
        preflight.check_tokenizer(tokenizer, f"model_name_or_path={model_args.model_name_or_path!r}")
        preflight.check_prompt_lengths(dataset["prompt"], tokenizer, getattr(config, "max_position_embeddings", None),
                                       args.max_completion_length, args.chat_template_kwargs)
    except ValueError as err:
        raise ScriptError(str(err)) from err
