"""Which checkpoints are complete, which one a run resumes from, and when a new run is refused
(see `disco_trl.checkpoints`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import zipfile

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..geometry import BatchGeometry
from .state import (
    STATE_FILE,
    TRAINER_STATE_FILE,
    CheckpointError,
    ResumeWarning,
    changed_settings,
    check_geometry,
    load_rank_state,
    state_path,
)


logger = logging.get_logger(__name__)

_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


_STATE_NAME = re.compile(r"^disco_state_rank(\d+)\.pt$")


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


# ---------------------------------------------------------------------------------------------------- completeness
def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-N` folders of `output_dir`, newest (largest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir)
             if (m := _CHECKPOINT_NAME.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def _truncated(path: str) -> bool:
    """Cheap whole-file checks: a safetensors file reaches its last tensor, a torch/zip file has its directory."""
    if path.endswith(".safetensors"):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return True
            header = f.read(struct.unpack("<Q", head)[0])
        try:
            tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
            end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
        except (ValueError, KeyError, TypeError):
            return True
        return size < 8 + len(header) + end
    if path.endswith(".index.json"):
        try:
            with open(path) as f:
                shards = set(json.load(f)["weight_map"].values())
        except (ValueError, KeyError, OSError):
            return True
        folder = os.path.dirname(path)
        return any(not os.path.isfile(os.path.join(folder, s)) or _truncated(os.path.join(folder, s)) for s in shards)
    if path.endswith((".bin", ".pt")):
        return not zipfile.is_zipfile(path)
    return False


def _weights_problem(folder: str) -> str | None:
    files = [os.path.join(folder, name) for name in _WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    subdirs = [name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))]
    if any(name.startswith("global_step") or "pytorch_model_fsdp" in name for name in subdirs):
        return None  # DeepSpeed / FSDP shards: loaded (and checked) by their own code
    adapters = ("adapter_model.safetensors", "adapter_model.bin")
    files += [os.path.join(folder, d, name) for d in subdirs for name in adapters
              if os.path.isfile(os.path.join(folder, d, name))]
    if os.path.isfile(os.path.join(folder, "pytorch_model_fsdp.bin")):
        files.append(os.path.join(folder, "pytorch_model_fsdp.bin"))
    if not files:
        return "no model weights"
    truncated = [os.path.relpath(f, folder) for f in files if _truncated(f)]
    return f"truncated weights {truncated}" if truncated else None


def _trainer_state_problem(folder: str) -> str | None:
    path = os.path.join(folder, TRAINER_STATE_FILE)
    if not os.path.isfile(path):
        return f"no {TRAINER_STATE_FILE}"
    try:
        with open(path) as f:
            json.load(f)
    except (ValueError, OSError):
        return f"{TRAINER_STATE_FILE} is truncated"
    return None


def _disco_state_problem(folder: str, world_size: int) -> tuple[str, str] | None:
    """(kind, description) of what is wrong with DisCO's per-process files; kind: "none", "world" or "partial"."""
    ranks = {int(m.group(1)) for name in os.listdir(folder) if (m := _STATE_NAME.match(name))}
    whole = {r for r in ranks if zipfile.is_zipfile(state_path(folder, r))}
    if not ranks:
        return "none", f"no DisCO state ({STATE_FILE.format('*')})"
    if ranks == whole == set(range(len(whole))) and len(whole) != world_size:
        return "world", (f"DisCO state of {len(whole)} processes (world_size={len(whole)}), this run has "
                         f"world_size={world_size}")
    missing = sorted(set(range(world_size)) - whole)
    if missing:
        return "partial", f"no whole {STATE_FILE.format('N')} for process(es) {missing}"
    return None


def incomplete_reasons(folder: str, world_size: int) -> list[str]:
    """Why `folder` is not a complete checkpoint for a run on `world_size` processes (empty: it is complete)."""
    disco = _disco_state_problem(folder, world_size)
    problems = (_trainer_state_problem(folder), _weights_problem(folder), disco and disco[1])
    return [p for p in problems if p is not None]


# ---------------------------------------------------------------------------------------------- what to resume from
def last_complete_checkpoint(output_dir: str, world_size: int) -> str:
    """The newest complete checkpoint in `output_dir`; warns about each newer incomplete one it skips."""
    folders = checkpoint_folders(output_dir)
    if not folders:
        raise CheckpointError(
            f"resume_from_checkpoint='last': there is no checkpoint-N folder in output_dir={output_dir!r} to resume "
            "from. Drop the option to start a new run, or set output_dir to the interrupted run's."
        )
    skipped = []
    for folder in folders:
        reasons = incomplete_reasons(folder, world_size)
        if not reasons:
            for name, why in skipped:
                warnings.warn(
                    f"resume_from_checkpoint='last': skipping {name}, which is incomplete ({why}; probably "
                    "interrupted "
                    f"while being written); resuming from {os.path.basename(folder)}.", ResumeWarning, stacklevel=3,
                )
            return folder
        skipped.append((os.path.basename(folder), "; ".join(reasons)))
    listed = "; ".join(f"{name}: {why}" for name, why in skipped)
    raise CheckpointError(
        f"resume_from_checkpoint='last': output_dir={output_dir!r} holds no complete checkpoint ({listed}). A "
        "complete "
        "one has trainer_state.json, the model weights and DisCO's state of every process; one with no DisCO state "
        "at all can still be resumed (not bit-exactly) by passing its path as resume_from_checkpoint."
    )


def check_explicit_checkpoint(folder: str, world_size: int) -> None:
    """An explicit checkpoint must be whole; it may lack DisCO's state entirely (then the run warns), not in part."""
    _refuse_a_run_folder(folder)
    named_checkpoint = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(folder)))
    if not os.path.isdir(folder) or not (os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)) or named_checkpoint):
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} is not a checkpoint (no trainer_state.json there): give a "
            "checkpoint-N folder written by a previous run, or `last` for the newest one in output_dir."
        )
    problems = [p for p in (_trainer_state_problem(folder), _weights_problem(folder)) if p is not None]
    disco = _disco_state_problem(folder, world_size)
    if disco is not None and disco[0] == "world":
        raise CheckpointError(
            f"{folder} holds {disco[1]}: its buffered generation batches belong to the saving processes. "
            "Resume on the same number of processes, or start a new run from its weights (model_name_or_path="
            f"{folder}) in another output_dir."
        )
    if disco is not None and disco[0] == "partial":
        problems.append(disco[1])
    if problems:
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} is incomplete ({'; '.join(problems)}): probably interrupted while "
            "being written. Resume from an earlier checkpoint-N, or with `last` (the newest complete one)."
        )


def _refuse_a_run_folder(folder: str) -> None:
    """A run's output folder (it holds checkpoint-N folders) or a saved model (no optimizer state) is no checkpoint:
    resuming from it would restart the optimizer and scheduler from scratch."""
    inner = [os.path.basename(f) for f in checkpoint_folders(folder)]
    if inner:
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} is a run's output folder, not a checkpoint: pass one of its "
            f"checkpoint folders ({', '.join(inner[:3])}), or `last` with output_dir={folder!r} for its newest "
            "complete one."
        )
    names = os.listdir(folder) if os.path.isdir(folder) else []
    has_optimizer = any(n.startswith(("optimizer", "global_step")) or "optim" in n for n in names)
    if os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)) and not has_optimizer:
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} holds a saved model but no optimizer state: it is a finished run's "
            "output, not a checkpoint. Start a new run from its weights (model_name_or_path=...) in another "
            "output_dir, or resume from one of the run's checkpoint-N folders."
        )


def refuse_to_overwrite(args) -> None:
    """A new run must not silently overwrite the checkpoints an earlier run left in output_dir."""
    folders = checkpoint_folders(args.output_dir)
    if not folders or getattr(args, "overwrite_output_dir", False):
        return
    names = [os.path.basename(f) for f in folders]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise CheckpointError(
        f"output_dir={args.output_dir!r} already holds checkpoints of an earlier run ({shown}), which this new run "
        "would overwrite. To continue that run, pass --resume_from_checkpoint last (resume_from_checkpoint=True in "
        "Python); to start over and delete them, pass --overwrite_output_dir (overwrite_output_dir=True); or choose "
        "another output_dir."
    )


def resolve_resume(args, value, world_size: int, rank: int) -> str | None:
    """The checkpoint folder to resume from (None: a new run), after every check that can refuse it.

    `value`: None/False (new run), True or "last" (newest complete checkpoint in output_dir), or a folder.
    """
    if value is None or value is False:
        refuse_to_overwrite(args)
        return None
    if value is True or str(value).lower() == "last":
        folder = last_complete_checkpoint(args.output_dir, world_size)
    else:
        folder = str(value)
        check_explicit_checkpoint(folder, world_size)
    state = load_rank_state(folder, rank, mmap=True)
    if state is not None:
        check_geometry(folder, state, BatchGeometry.from_args(args, world_size))
        changed_settings(folder, state.get("settings"), args)
    return folder


def remove_checkpoints(output_dir: str) -> list[str]:
    """Delete the `checkpoint-N` folders of `output_dir` (overwrite_output_dir=True); returns their names."""
    removed = []
    for folder in checkpoint_folders(output_dir):
        shutil.rmtree(folder)
        removed.append(os.path.basename(folder))
    return removed


def resolve_resume_for_trainer(trainer, value) -> str | None:
    """`resolve_resume` for `DiscoTrainer.train`; with overwrite_output_dir, a new run deletes the old checkpoints."""
    args, accelerator = trainer.args, trainer.accelerator
    checkpoint = resolve_resume(args, value, accelerator.num_processes, accelerator.process_index)
    if checkpoint is None and getattr(args, "overwrite_output_dir", False):
        if accelerator.is_main_process:
            removed = remove_checkpoints(args.output_dir)
            if removed:
                logger.warning(f"overwrite_output_dir=True: deleted the earlier run's {', '.join(removed)}.")
        accelerator.wait_for_everyone()
    return checkpoint
