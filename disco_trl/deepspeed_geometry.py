"""DeepSpeed must batch exactly as the training arguments say, or DisCO's groups are cut across optimizer steps.

DisCO normalises each optimizer step by the questions it covers and, when a group of `num_generations` completions
spans micro-steps, computes the group's weights once per optimizer step (see `DiscoTrainer`). Both assume that the
optimizer steps every `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` sequences. Under
DeepSpeed the engine counts micro-batches itself, from its own config: a DeepSpeed config (a JSON file, a dict passed
as `deepspeed=`, or the `deepspeed_config` section of an accelerate config) that names other values would make the
engine step elsewhere. One such trap is silent: accelerate writes `gradient_accumulation_steps: 1` into a DeepSpeed
config that does not name it. Another is CPU-only: without `use_cpu`, accelerate's DeepSpeed set-up counts 1 process
however many run. `check_deepspeed_geometry` refuses both when the configuration is built, before any model loads,
naming the values and the fix.
"""

from __future__ import annotations

import json
import os

_AUTO = (None, "auto")


def _source(args) -> tuple[str, dict | None]:
    """Where the DeepSpeed config came from (for the message) and its raw content when it is a file or a dict."""
    given = getattr(args, "deepspeed", None)
    if isinstance(given, dict):
        return "the DeepSpeed config dict passed as `deepspeed`", given
    path = given or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path and path != "none":
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            raw = None
        return f"the DeepSpeed config file {path}", raw
    return "the accelerate config's deepspeed_config (or `accelerate launch --gradient_accumulation_steps`)", None


def _expected(args) -> dict[str, tuple[int, str, str]]:
    """DeepSpeed key -> (value the training arguments imply, their name, how it is computed)."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    world = args.world_size
    total = per_device * accumulation * world
    return {
        "train_micro_batch_size_per_gpu": (per_device, "per_device_train_batch_size", ""),
        "gradient_accumulation_steps": (accumulation, "gradient_accumulation_steps", ""),
        "train_batch_size": (
            total, "per_device_train_batch_size x gradient_accumulation_steps x processes",
            f" ({per_device} x {accumulation} x {world})",
        ),
    }


def _fix(key: str, value, name: str, source: str, raw: dict | None) -> str:
    if raw is None and key == "gradient_accumulation_steps":
        follow = "Remove gradient_accumulation_steps from " + source
    else:
        follow = f'Set "{key}": "auto" in {source}'
    other = f"make {name} = {value}" if key == "train_batch_size" else f"set {name}={value} in the training arguments"
    return f"{follow} so that DeepSpeed follows the training arguments, or {other}."


def _check_process_count(args) -> None:
    """On a machine without a GPU, accelerate's DeepSpeed set-up counts 1 process unless `use_cpu` is set."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == args.world_size:
        return
    raise ValueError(
        f"DeepSpeed runs {dist.get_world_size()} processes, but the training arguments count world_size="
        f"{args.world_size} (accelerate does so under DeepSpeed on a machine without a GPU), so generation batches and "
        f"DisCO's gradient normalisation would be sized for {args.world_size}. On CPU, set use_cpu=True "
        "(--use_cpu true); DeepSpeed then runs on its CPU accelerator with gloo."
    )


def check_deepspeed_geometry(args) -> None:
    """Raise ValueError when DeepSpeed would batch otherwise than the training arguments say."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None:
        return
    _check_process_count(args)
    config = plugin.deepspeed_config
    source, raw = _source(args)
    for key, (want, name, detail) in _expected(args).items():
        value = config.get(key)
        if value in _AUTO or int(value) == want:
            continue
        implicit = ""
        if raw is not None and key not in raw and key == "gradient_accumulation_steps":
            implicit = f" (accelerate sets {value} when {source} does not name it)"
        raise ValueError(
            f"DeepSpeed batch geometry: {source} gives {key}={value}{implicit}, but the training arguments give "
            f"{name}={want}{detail}. DeepSpeed would count micro-batches and optimizer steps otherwise than DisCO, "
            f"splitting the groups of num_generations={args.num_generations} completions across optimizer steps (a "
            f"wrong gradient). " + _fix(key, value, name, source, raw)
        )
