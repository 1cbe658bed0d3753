"""DisCO's checkpoints: what DisCO adds to Trainer's, what makes one complete, and which one a run resumes from.

TRL keeps the generation batch in memory and restarts its micro-step counter at 0 on resume, so a run resumed in the
middle of a generation batch would sample new completions. `DiscoTrainer` therefore saves, with each checkpoint, one
file per process, `disco_state_rank{r}.pt`: the buffered generation batch, the micro-step counter and the batch
geometry they were cut with. With the RNG state that Trainer already restores, a resumed run continues exactly where
it stopped.

**Complete checkpoint.** A `checkpoint-N` folder is complete when it has

1. `trainer_state.json`, readable JSON (Trainer writes it last; DisCO writes its own files before Trainer's);
2. the model weights: one of transformers' weights files (`model.safetensors`, `pytorch_model.bin`, their sharded
   `.index.json` with every shard, or a PEFT `adapter_model.*`), a DeepSpeed `global_step*` folder or an FSDP state,
   none of them truncated (safetensors headers and zip archives are checked, not their contents);
3. `disco_state_rank{r}.pt` for every process r of this run (each written atomically: present means whole).

**Which checkpoint.** `resume_from_checkpoint=True` (Python) or `last` (script, also Python) resumes from the newest
complete checkpoint, warning about every newer one it skips and why. An explicit path must satisfy 1 and 2, and hold
DisCO's state for all of this run's processes or for none: without any (a checkpoint of another trainer, or one
interrupted before DisCO saved), the run resumes with a warning that it regenerates the current generation batch and so
is not bit-exact with an uninterrupted run. The batch geometry must be the one the checkpoint was saved with.

**Lost work.** A run without `resume_from_checkpoint` in an `output_dir` that already holds `checkpoint-N` folders is
refused, unless `overwrite_output_dir=True`, which deletes them when training starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import zipfile

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .geometry import BatchGeometry


logger = logging.get_logger(__name__)

STATE_FILE = "disco_state_rank{}.pt"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_STATE_NAME = re.compile(r"^disco_state_rank(\d+)\.pt$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


class CheckpointError(ValueError):
    """A checkpoint problem found before training starts. The message (one line) says what to do."""


class ResumeWarning(UserWarning):
    """A resumed run that will not continue exactly where the interrupted one stopped, or a skipped checkpoint."""


# ------------------------------------------------------------------------------------------------- DisCO's state
def state_path(folder: str, rank: int) -> str:
    return os.path.join(folder, STATE_FILE.format(rank))


def save_rank_state(folder: str, rank: int, step: int, buffered_inputs, geometry: BatchGeometry) -> None:
    """Write this process's state atomically (a temporary file renamed), so that a present file is a whole one."""
    os.makedirs(folder, exist_ok=True)
    path = state_path(folder, rank)
    state = {"step": step, "buffered_inputs": buffered_inputs, "geometry": geometry.checkpoint_fields()}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_rank_state(folder: str, rank: int, device=None, mmap: bool = False) -> dict | None:
    path = state_path(folder, rank)
    if not os.path.exists(path):
        return None
    # DeepSpeed's CPU accelerator says cpu:0, which torch.load cannot map to
    device = "cpu" if device is None or torch.device(device).type == "cpu" else device
    return torch.load(path, map_location=device, weights_only=False, mmap=mmap)


def check_geometry(checkpoint: str, state: dict, geometry: BatchGeometry) -> None:
    """Refuse a saved buffer cut with other batch settings than this run's (an IndexError would follow, or worse)."""
    current = geometry.checkpoint_fields()
    saved = state.get("geometry")
    if saved is None:  # saved before DisCO recorded the geometry: compare what the buffer itself shows
        buffer = state.get("buffered_inputs") or []
        saved = {"steps_per_generation": len(buffer)} if buffer else {}
        if buffer:
            saved["per_device_train_batch_size"] = len(buffer[0]["completion_ids"])
    differences = [name for name in current if name in saved and saved[name] != current[name]]
    if differences:
        was = ", ".join(f"{name}={saved[name]}" for name in differences)
        now = ", ".join(f"{name}={current[name]}" for name in differences)
        processes = " (world_size counts processes)" if "world_size" in differences else ""
        raise CheckpointError(
            f"{checkpoint} was saved with {was}, but this run has {now}{processes}: its buffered generation batch "
            "does "
            "not fit this run's batches. Resume with the checkpoint's settings, or start a new "
            f"run from its weights (model_name_or_path={checkpoint}) in another output_dir."
        )


def missing_state_warning(checkpoint: str, rank: int) -> str:
    return (
        f"Resuming from {checkpoint}, which has no DisCO state for this process ({STATE_FILE.format(rank)}): it was "
        "written by another trainer, or its save was interrupted. The run regenerates the current generation batch "
        "instead of continuing the buffered one, so it will NOT be bit-exact with an uninterrupted run: its "
        "completions, and hence its parameters, differ from this step on."
    )


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


# ------------------------------------------------------------------------------------------- the trainer's callback
class DiscoStateCallback(TrainerCallback):
    """Writes DisCO's state into every checkpoint and restores it when a run resumes (`DiscoTrainer` adds it).

    Saving happens at the end of the step whose checkpoint Trainer is about to write (`control.should_save`), so
    DisCO's file is in the folder before Trainer's files and `trainer_state.json`, which Trainer writes last: a save
    cut short lacks `trainer_state.json` and is skipped by `last`. `resume_from` is the checkpoint that
    `DiscoTrainer.train` resolved; its state is loaded when training begins, after Trainer has restored the rest.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.resume_from: str | None = None

    def _folder(self, args, state) -> str:
        return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _save(self, args, state) -> None:
        trainer = self.trainer
        geometry = BatchGeometry.from_args(args, trainer.accelerator.num_processes)
        save_rank_state(self._folder(args, state), trainer.accelerator.process_index, trainer._step,
                        trainer._buffered_inputs, geometry)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._save(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._save(args, state)

    def on_save(self, args, state, control, **kwargs):
        # a callback that runs after this one may have asked for the save: write the state now if it is missing
        if not os.path.isfile(state_path(self._folder(args, state), self.trainer.accelerator.process_index)):
            self._save(args, state)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _restore(self, checkpoint: str) -> None:
        trainer = self.trainer
        rank = trainer.accelerator.process_index
        saved = load_rank_state(checkpoint, rank, trainer.accelerator.device)
        if saved is None:  # a checkpoint of another trainer: TRL's behaviour (regenerate) applies
            warnings.warn(missing_state_warning(checkpoint, rank), ResumeWarning, stacklevel=2)
            return
        check_geometry(checkpoint, saved, BatchGeometry.from_args(trainer.args, trainer.accelerator.num_processes))
        trainer._step = saved["step"]
        trainer._buffered_inputs = saved["buffered_inputs"]
