"""DisCO's per-process state file in a checkpoint (`disco_state_rank{r}.pt`): what it may hold, how it is written,
checked and read (see `disco_trl.checkpoints`).

**The state file** (`disco_state_rank{r}.pt`, written with `torch.save`) is a dict of plain data only: dicts, lists,
tuples, str, int, float, bool, None and tensors. It is read with `torch.load(..., weights_only=True)`, which refuses
anything else (a pickled object, whose loading could run code: a checkpoint from someone else cannot). Its keys:
`format` (2), `step`, `buffered_inputs` (the generation batch: a list of dicts of tensors), `geometry`, `settings`,
`dataset` (the training set's fingerprint), any further fields a caller passes to `save_rank_state` (the same plain
types; others are refused when saving), and `checksum`: a SHA-256 over all the others, their types and every tensor's
bytes, checked when the file is read, so a damaged file is refused rather than trained on. A file of an older
disco-trl (no `checksum`) is read with a warning that it cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import zipfile

import torch
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ..geometry import BatchGeometry


STATE_FILE = "disco_state_rank{}.pt"


class CheckpointError(ValueError):
    """A checkpoint problem found before training starts. The message (one line) says what to do."""


class DamagedState(CheckpointError):
    """DisCO's state file of a checkpoint cannot be trusted: unreadable, not plain data, or not what was written.
    `reason` says which file and why, for the lists of incomplete checkpoints."""

    def __init__(self, reason: str):
        super().__init__(
            f"{reason}. Resume from another checkpoint-N (`last` skips damaged ones), or start a new run from its "
            "weights (model_name_or_path=...) in another output_dir."
        )
        self.reason = reason


def state_path(folder: str, rank: int) -> str:
    return os.path.join(folder, STATE_FILE.format(rank))


STATE_FORMAT = 2


def _digest(value, sha) -> None:
    """Feed `value` (plain data and tensors only) into `sha`: its types, structure and every tensor's bytes."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        sha.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        sha.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, dict):
        sha.update(f"d{len(value)}".encode())
        for key, item in value.items():
            _digest(key, sha)
            _digest(item, sha)
    elif isinstance(value, list | tuple):
        sha.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _digest(item, sha)
    elif value is None or type(value) in (bool, int, float, str):  # exact types: no enum, no numpy scalar
        text = value.hex() if isinstance(value, float) else repr(value)
        sha.update(f"{type(value).__name__}:{len(text)}:{text}".encode())
    else:
        raise TypeError(
            f"DisCO's checkpoint state may hold only dicts, lists, tuples, str, int, float, bool, None and tensors "
            f"(it is read with torch.load(weights_only=True)); got a {type(value).__name__}."
        )


def state_checksum(state: dict) -> str:
    """SHA-256 of a state dict without its `checksum` entry."""
    sha = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, sha)
    return sha.hexdigest()


def save_rank_state(folder: str, rank: int, step: int, buffered_inputs, geometry: BatchGeometry,
                    settings: dict | None = None, **fields) -> None:
    """Write this process's state atomically (a temporary file renamed), so that a present file is a whole one.
    `fields`: further plain data to keep (see the module doc)."""
    os.makedirs(folder, exist_ok=True)
    path = state_path(folder, rank)
    state = {"format": STATE_FORMAT, "step": step, "buffered_inputs": buffered_inputs,
             "geometry": geometry.checkpoint_fields(), "settings": settings, **fields}
    state["checksum"] = state_checksum(state)
    try:
        torch.save(state, path + ".tmp")
    except (OSError, RuntimeError) as err:  # torch's writer says "basic_ios::clear: iostream error" on a full disk
        raise OSError(f"could not write {path}: {err}{_free_space_note(folder)}") from err
    os.replace(path + ".tmp", path)


def _free_space_note(folder: str) -> str:
    free = shutil.disk_usage(folder).free
    return f" ({free / 2**20:.0f} MiB free on the disk of {folder}: the disk is full)" if free < 64 * 2**20 else ""


def load_rank_state(folder: str, rank: int, device=None, mmap: bool = False) -> dict | None:
    """This process's state (None when the checkpoint has none), read as plain data and checked against its checksum;
    `DamagedState` when it cannot be read safely or is not what was written."""
    path = state_path(folder, rank)
    if not os.path.exists(path):
        return None
    name = os.path.basename(path)
    if _corrupt_records(path):
        raise DamagedState(f"{name} is damaged (truncated or corrupt: its records do not match their CRCs)")
    try:
        with torch.serialization.safe_globals(_OLDER_SETTINGS_TYPES):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only refuses what is not plain data
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"it names {found.group(1)}" if found else " ".join(str(err).split())[:100]
        raise DamagedState(f"{name} holds more than plain data ({what}): it was not written by DisCO, and it is not "
                           "loaded, since loading it could run code") from err
    except (RuntimeError, EOFError, ValueError, KeyError) as err:
        raise DamagedState(f"{name} is damaged (unreadable: {' '.join(str(err).split())[:100]})") from err
    if not isinstance(state, dict):
        raise DamagedState(f"{name} is damaged (not a dict)")
    if "checksum" in state and state["checksum"] != _checksum_or_none(state):
        raise DamagedState(f"{name} is damaged (its checksum does not match its contents)")
    # DeepSpeed's CPU accelerator says cpu:0, which torch.load cannot map to
    if device is not None and torch.device(device).type != "cpu":
        state = _to_device(state, device)
    return state


# Enums an older disco-trl recorded in `settings` (constructing one from its value runs no code of the file's)
_OLDER_SETTINGS_TYPES = [SchedulerType, OptimizerNames]


def _corrupt_records(path: str) -> bool:
    """Whether the file's zip structure is broken or a record does not match its CRC (a small file: read whole)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return True


def _checksum_or_none(state: dict) -> str | None:
    try:
        return state_checksum(state)
    except TypeError:
        return None


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value


def rank_state_problem(folder: str, rank: int) -> str | None:
    """Why this process's state file cannot be used (None: it can, or there is none)."""
    try:
        load_rank_state(folder, rank, mmap=True)
    except DamagedState as err:
        return err.reason
    return None


# ------------------------------------------------------------------------------------------------ the training set
FINGERPRINT_ROWS = 256


def dataset_fingerprint(dataset) -> dict | None:
    """{"rows": its length, "sha256": of up to 256 prompts spread over it} for a sized training set with a `prompt`
    column; None for a stream (IterableDataset: its rows are not read for this) or anything else."""
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "select_columns"):
        return None
    if "prompt" not in (getattr(dataset, "column_names", None) or ()):
        return None
    rows = len(dataset)
    indices = list(range(0, rows, max(rows // FINGERPRINT_ROWS, 1)))[:FINGERPRINT_ROWS]
    prompts = dataset.select_columns(["prompt"])[indices]["prompt"] if indices else []
    text = json.dumps(prompts, sort_keys=True, default=lambda o: type(o).__name__)
    return {"rows": rows, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def dataset_change_warning(checkpoint: str, saved: dict | None, now: dict | None) -> str | None:
    if not saved or not now or saved == now:
        return None
    size = f"{saved['rows']} rows then, {now['rows']} now" if saved["rows"] != now["rows"] else \
        f"{now['rows']} rows, other prompts"
    return (
        f"Resuming {checkpoint} on another training set than the one it was trained on ({size}): the run goes on "
        "with new data in the middle of its order. If that is what you want, ignore this; otherwise resume with the "
        "checkpoint's training set."
    )
