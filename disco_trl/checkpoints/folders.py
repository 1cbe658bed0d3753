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
from .state import TRAINER_STATE_FILE, ResumeWarning, RunFinished, changed_settings, check_geometry
from .state_file import STATE_FILE, CheckpointError, load_rank_state, rank_state_problem


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
    if path.endswith((".bin", ".pt", ".pth")):
        return _damaged_zip(path)
    return False


_FULL_CHECK_BYTES = 64 * 2**20  # torch files up to this size are checked in full (every record's CRC)


def _damaged_zip(path: str) -> bool:
    """Whether a torch (zip) file is truncated or corrupt: its directory must read; a small one's records must all
    match their CRCs (a large one, an optimizer state of many GB, is not read in full for this)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return os.path.getsize(path) <= _FULL_CHECK_BYTES and archive.testzip() is not None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return True


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
    """(kind, description) of what is wrong with DisCO's per-process files; kind: "none", "world", "partial" or
    "damaged"."""
    ranks = {int(m.group(1)) for name in os.listdir(folder) if (m := _STATE_NAME.match(name))}
    if not ranks:
        return "none", f"no DisCO state ({STATE_FILE.format('*')})"
    if ranks == set(range(len(ranks))) and len(ranks) != world_size:
        return "world", (f"DisCO state of {len(ranks)} processes (world_size={len(ranks)}), this run has "
                         f"world_size={world_size}")
    missing = sorted(set(range(world_size)) - ranks)
    if missing:
        return "partial", f"no {STATE_FILE.format('N')} for process(es) {missing}"
    damaged = [p for r in range(world_size) if (p := rank_state_problem(folder, r)) is not None]
    return ("damaged", "; ".join(damaged)) if damaged else None


def _torch_file_problem(folder: str, name: str, required: bool = True) -> str | None:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return f"no {name}" if required else None
    return f"{name} is damaged (truncated or corrupt)" if _damaged_zip(path) else None


def _deepspeed_problems(folder: str, world_size: int) -> list[str]:
    """DeepSpeed's own layout: `latest` names the global_step folder, whose optimizer states (one per process) and
    model states must all be whole."""
    latest = os.path.join(folder, "latest")
    if not os.path.isfile(latest):
        return ["no DeepSpeed `latest` file (it names the global_step folder to load)"]
    with open(latest) as f:
        tag = f.read().strip()
    step_dir = os.path.join(folder, tag)
    if not tag or not os.path.isdir(step_dir):
        return [f"DeepSpeed's `latest` names {tag!r}, which is not there"]
    names = sorted(os.listdir(step_dir))
    optim = [n for n in names if n.endswith("optim_states.pt")]
    problems = [f"{tag}/{n} is damaged (truncated or corrupt)" for n in names
                if n.endswith("_states.pt") and _damaged_zip(os.path.join(step_dir, n))]
    if optim and len(optim) < world_size:
        problems.append(f"{tag} holds the optimizer states of {len(optim)} processes, this run has {world_size}")
    if not any(n.endswith("model_states.pt") for n in names):
        problems.append(f"{tag} holds no model states")
    return problems


def _resume_files_problems(folder: str, world_size: int) -> list[str]:
    """What Trainer needs to resume exactly: the optimizer and scheduler states and every process's RNG state."""
    names = os.listdir(folder)
    if any(n.startswith("global_step") and os.path.isdir(os.path.join(folder, n)) for n in names):
        # DeepSpeed saves the optimizer (and its own scheduler, if its config has one) in global_step*/
        problems = _deepspeed_problems(folder, world_size) + [_torch_file_problem(folder, "scheduler.pt", False)]
    else:
        fsdp = [n for n in names if n.startswith("optimizer") and os.path.isdir(os.path.join(folder, n))]
        optimizer = "optimizer.bin" if os.path.isfile(os.path.join(folder, "optimizer.bin")) else "optimizer.pt"
        # transformers loads neither optimizer.pt nor scheduler.pt unless both are there
        problems = [None if fsdp else _torch_file_problem(folder, optimizer),
                    _torch_file_problem(folder, "scheduler.pt")]
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    problems += [_torch_file_problem(folder, name) for name in rng]
    return [p for p in problems if p is not None]


def incomplete_reasons(folder: str, world_size: int) -> list[str]:
    """Why `folder` is not a complete checkpoint for a run on `world_size` processes (empty: it is complete): every
    file a resume reads must be there and whole (see `disco_trl.checkpoints`)."""
    problems = [_trainer_state_problem(folder), _weights_problem(folder), *_resume_files_problems(folder, world_size)]
    disco = _disco_state_problem(folder, world_size)
    return [p for p in problems if p is not None] + ([disco[1]] if disco else [])


# ---------------------------------------------------------------------------------------------- what to resume from
def last_complete_checkpoint(output_dir: str, world_size: int) -> str:
    """The newest complete checkpoint in `output_dir`; warns about each newer incomplete one it skips, and why."""
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
                    f"resume_from_checkpoint='last': skipping {name}, which is incomplete ({why}); resuming from "
                    f"{os.path.basename(folder)}.", ResumeWarning, stacklevel=3,
                )
            return folder
        skipped.append((os.path.basename(folder), "; ".join(reasons)))
    listed = "; ".join(f"{name}: {why}" for name, why in skipped)
    raise CheckpointError(
        f"resume_from_checkpoint='last': output_dir={output_dir!r} holds no complete checkpoint ({listed}). A "
        "complete one has trainer_state.json, the model weights, the optimizer, scheduler and RNG states and DisCO's "
        "state of every process, all whole (a save_only_model checkpoint cannot be resumed); one with no DisCO state "
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
    disco = _disco_state_problem(folder, world_size)
    if disco is not None and disco[0] == "world":
        raise CheckpointError(
            f"{folder} holds {disco[1]}: its buffered generation batches belong to the saving processes. "
            "Resume on the same number of processes, or start a new run from its weights (model_name_or_path="
            f"{folder}) in another output_dir."
        )
    problems = [_trainer_state_problem(folder), _weights_problem(folder), *_resume_files_problems(folder, world_size)]
    problems = [p for p in problems if p is not None] + ([disco[1]] if disco and disco[0] != "none" else [])
    if problems:
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} is incomplete ({'; '.join(problems)}): missing or damaged files, "
            "from a save that was interrupted or a copy that was not whole. Resume from an earlier checkpoint-N, or "
            "with `last` (the newest complete one)."
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
    if _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(folder))):
        return  # a checkpoint-N folder without optimizer state is an incomplete checkpoint (said as such)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    has_optimizer = any(n.startswith(("optimizer", "global_step")) or "optim" in n for n in names)
    if os.path.isfile(os.path.join(folder, TRAINER_STATE_FILE)) and not has_optimizer:
        raise CheckpointError(
            f"resume_from_checkpoint={folder!r} holds a saved model but no optimizer state: it is what save_model "
            "writes (a final model), not a checkpoint. Start a new run from its weights (model_name_or_path=...) in "
            "another output_dir, or resume from one of the run's checkpoint-N folders."
        )


def _finished_step(args, folder: str) -> int | None:
    """The global step recorded in `folder`'s trainer_state.json when it is this run's end (max_steps reached, or, with
    max_steps=-1, num_train_epochs done), else None."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_FILE)) as f:
            saved = json.load(f)
        step, epoch = int(saved.get("global_step") or 0), float(saved.get("epoch") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if args.max_steps > 0:
        return step if step >= args.max_steps else None
    return step if step > 0 and epoch >= float(args.num_train_epochs) - 1e-9 else None


def refuse_finished_run(args, folder: str, final_model: bool = False) -> None:
    """RunFinished when `folder` (a checkpoint, or with `final_model` the output_dir with the saved final model) says
    the run has reached its end: resuming would train past it and overwrite the final model."""
    weights = [os.path.join(folder, name) for name in _WEIGHT_FILES]
    if final_model and not any(os.path.isfile(path) and not _truncated(path) for path in weights):
        return  # no saved final model: the run did not get to its end
    step = _finished_step(args, folder)
    if step is not None:
        limit = f"max_steps={args.max_steps}" if args.max_steps > 0 else f"num_train_epochs={args.num_train_epochs}"
        where = f"the final model's {TRAINER_STATE_FILE} in {folder}" if final_model else \
            os.path.join(folder, TRAINER_STATE_FILE)
        raise RunFinished(step, where, limit)


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

    `value`: None/False (new run), True or "last" (newest complete checkpoint in output_dir), or a folder. A run that
    already reached its end (the final model in output_dir, or the checkpoint, says so) raises `RunFinished`.
    """
    if value is None or value is False:
        refuse_to_overwrite(args)
        return None
    if value is True or str(value).lower() == "last":
        if os.path.isdir(args.output_dir):
            refuse_finished_run(args, args.output_dir, final_model=True)
        folder = last_complete_checkpoint(args.output_dir, world_size)
    else:
        folder = str(value)
        check_explicit_checkpoint(folder, world_size)
    refuse_finished_run(args, folder)
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
