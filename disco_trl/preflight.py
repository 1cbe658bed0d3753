"""What a run checks before it spends compute, and the lock that keeps one run per output folder.

Checks on a run's inputs (each raises ValueError with one line naming the setting and the fix): the training set
holds at least one generation batch (`check_dataset_size`) and, to fill batches, can be indexed
(`check_fill_dataset`), every LoRA target module exists in the model (`check_lora_targets`, on a model built on the
meta device when the weights are not loaded yet), the tokenizer is not empty (`check_tokenizer`), and every prompt fits
the model's positions with room for max_completion_length tokens (`check_prompt_lengths`; of a stream, an
`IterableDataset`, the first `STREAM_PREFIX` prompts: `prompts_to_check`). The training script runs them before any
weights load; `DiscoTrainer` runs them before training starts. A model's config is read in one place, `model_config`,
as TRL reads it (revision, trust_remote_code).

`FolderLock`: a training run (`DiscoTrainer.train`, the training script) or an evaluation (`disco-trl eval`) holds its
output folder for as long as it runs, through a lock file in it (`.disco-lock`, JSON: host, pid, process start time,
what holds it). A second run into the same folder is refused with one line naming the holder. A lock whose holder is
gone is taken over with a warning: on the same host when the process no longer exists (or is another process with
the same pid), on another host (a shared file system) when the holder has not renewed it for `STALE_AFTER_S`
seconds; the holder renews it every `HEARTBEAT_S` seconds from a daemon thread.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path

import datasets
import torch
from accelerate.utils import broadcast_object_list
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig


LOCK_FILE = ".disco-lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0


class FolderInUse(RuntimeError):
    """Another live run holds the folder. The message (one line) names it and says what to do."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("renewed", 0)) < STALE_AFTER_S
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("start")
    return start is None or _process_start(pid) in (None, start)


_HELD: dict[Path, FolderLock] = {}  # the folders this process holds, for re-entry from another FolderLock object


class FolderLock:
    """An exclusive hold on `folder` for `what` (e.g. "a training run"). Re-entrant within a process: the training
    script takes the folder, and the trainer it starts takes it again."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._held = 0
        self._stop = threading.Event()
        self._owner: FolderLock | None = None  # the object that holds the file, when this one re-entered

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
                "what": self.what, "renewed": time.time()}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: judged by the file's age below

    def _ours(self, holder: dict | None) -> bool:
        return bool(holder) and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()

    def acquire(self) -> FolderLock:
        if self._held:
            self._held += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder.resolve()
        if key in _HELD and _HELD[key] is not self:
            self._owner, self._held = _HELD[key], 1
            self._owner.acquire()
            return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._record(), handle)
            self._held = 1
            _HELD[key] = self
            self._start_heartbeat()
            return self
        raise FolderInUse(f"{self.folder}: could not take its lock file {self.path}; remove it if no run uses it.")

    def check_free(self) -> None:
        """FolderInUse if a live run other than this process holds the folder (takes nothing: any process of a
        launch may call it before the launch's main process takes the folder)."""
        if self.path.exists() and self.folder.resolve() not in _HELD:
            self._check_holder(remove_stale=False)

    def _check_holder(self, remove_stale: bool = True) -> None:
        """Raise if a live run holds the folder; remove a stale lock so the caller can retry."""
        holder = self._read()
        if holder is None:
            return
        if holder == {} and time.time() - self.path.stat().st_mtime < STALE_AFTER_S:
            holder = {"what": "another run", "host": "?", "pid": "?", "renewed": self.path.stat().st_mtime}
        if holder and (self._ours(holder) or _alive(holder)):
            raise FolderInUse(
                f"{self.folder} is in use by {holder.get('what', 'another run')} (host {holder.get('host')}, pid "
                f"{holder.get('pid')}): two runs writing one folder would overwrite each other's files. Wait for it "
                f"to finish, or use another folder (its lock: {self.path})."
            )
        if remove_stale:
            warnings.warn(f"{self.path}: taking over the lock of {holder.get('what', 'a run')} (host "
                          f"{holder.get('host')}, pid {holder.get('pid')}), which is no longer running.", stacklevel=3)
            self.path.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def renew():
            while not self._stop.wait(HEARTBEAT_S):
                holder = self._read()
                if self._ours(holder):
                    self.path.write_text(json.dumps(dict(holder, renewed=time.time())))

        threading.Thread(target=renew, name="disco-folder-lock", daemon=True).start()

    def release(self) -> None:
        if not self._held:
            return
        self._held -= 1
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner.release()
            return
        if self._held:
            return
        self._stop.set()
        _HELD.pop(self.folder.resolve(), None)
        if self._ours(self._read()):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold_folder(accelerator, folder, what: str):
    """The launch's main process holds `folder` for the block; every process raises FolderInUse if it cannot."""
    lock = FolderLock(folder, what)
    refusal = [None]
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except FolderInUse as err:
            refusal = [str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise FolderInUse(refusal[0])
    try:
        yield lock
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------------- inputs of a run
def model_config(model: str, args, revision: str | None = None) -> PretrainedConfig:
    """The config of a model path or Hub id, read as TRL loads the model: `args.model_init_kwargs`' `revision` and
    `trust_remote_code` when set there, else `revision` and `args.trust_remote_code`. The one place DisCO reads a
    model's config (the trainer's LoRA check, the vLLM checks, the training script)."""
    init = getattr(args, "model_init_kwargs", None) or {}
    trust = init.get("trust_remote_code", getattr(args, "trust_remote_code", False))
    return AutoConfig.from_pretrained(model, revision=init.get("revision", revision), trust_remote_code=bool(trust))


def check_model_tokenizer(model: str, args) -> None:
    """`check_tokenizer` on the tokenizer TRL would load for a model path or Hub id (when none is given), read as
    `model_config` reads the config; nothing when it cannot be read (TRL then says why)."""
    init = getattr(args, "model_init_kwargs", None) or {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=init.get("revision"),
                                                  trust_remote_code=bool(getattr(args, "trust_remote_code", False)))
    except (OSError, ValueError, TypeError):
        return
    check_tokenizer(tokenizer, f"model={model!r}")


def check_tokenizer(tokenizer, source) -> None:
    """ValueError when a tokenizer turns text into no tokens: transformers 5 builds such an empty tokenizer from a
    model folder without tokenizer files, and the run would fail only at its first generation."""
    try:
        ids = tokenizer("1 + 1 = 2")["input_ids"]
    except (TypeError, ValueError, KeyError):
        ids = []
    if not ids:
        raise ValueError(
            f"{source} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...): transformers builds an "
            "empty tokenizer from it, which turns every prompt into no tokens. Save the tokenizer next to the model "
            "(tokenizer.save_pretrained(path)), or point at a folder or Hub id that has one."
        )


STREAM_PREFIX = 256  # rows of a stream (IterableDataset) the checks look at


def prompts_to_check(dataset) -> list | None:
    """The prompts the checks look at: a Dataset's `prompt` column, the first STREAM_PREFIX prompts of a stream
    (`IterableDataset`, which is never read to its end here), None when there is no prompt column."""
    if isinstance(dataset, datasets.IterableDataset):
        head = [row.get("prompt") for row in itertools.islice(iter(dataset), STREAM_PREFIX)]
        return [p for p in head if p is not None] or None
    if dataset is None or "prompt" not in (getattr(dataset, "column_names", None) or ()):
        return None
    return dataset["prompt"]


def check_dataset_size(dataset, args) -> None:
    """ValueError when a (sized) training set holds fewer questions than one generation batch: no step would run."""
    if dataset is None or not hasattr(dataset, "__len__") or args.generation_batch_size is None:
        return
    per_generation = args.generation_batch_size // args.num_generations
    if len(dataset) < per_generation:
        raise ValueError(
            f"train_dataset has {len(dataset)} questions, fewer than one generation batch of {per_generation} "
            f"(generation_batch_size={args.generation_batch_size} / num_generations={args.num_generations}): the run "
            "would make no optimizer step. Use more questions, or a smaller generation batch (generation_batch_size, "
            "or per_device_train_batch_size x steps_per_generation x processes)."
        )


def check_fill_dataset(dataset) -> None:
    """ValueError unless the training set can be drawn from by index (fill_informative_questions draws its rounds'
    prompts itself, with a position saved in checkpoints)."""
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not (
            hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        kind = "no train_dataset" if dataset is None else f"a {type(dataset).__name__}"
        raise ValueError(
            f"DiscoConfig.fill_informative_questions=True draws prompts from the training set by index, but got "
            f"{kind}: pass a map-style dataset (datasets.Dataset; not a streaming IterableDataset), or set "
            "fill_informative_questions=False."
        )


def module_names(model) -> list[str]:
    """The names of a model's modules, for a loaded model or a config (built on the meta device: no weights)."""
    if isinstance(model, PretrainedConfig):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model)
    return [name for name, _ in model.named_modules()]


def check_lora_targets(model, peft_config) -> None:
    """ValueError naming every LoRA target module that matches no module of the model (PEFT raises only when none
    matches, after the model has loaded; a misspelt name beside a right one is silently left untrained)."""
    targets = getattr(peft_config, "target_modules", None)
    if getattr(peft_config, "r", 1) < 1:
        raise ValueError(f"LoRA rank r={peft_config.r} (lora_r): the adapter needs a rank >= 1 (common: 8 to 64).")
    if targets is None or targets == "all-linear":
        return
    names = module_names(model)
    if isinstance(targets, str):
        unmatched = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
        raise ValueError(
            f"LoRA target module(s) {unmatched} (lora_target_modules) match no module of the model; its module names "
            f"are {leaves}. Fix the names, or use 'all-linear'."
        )


def check_prompt_lengths(prompts, tokenizer, max_positions: int | None, max_completion_length: int,
                         chat_template_kwargs: dict | None = None) -> None:
    """ValueError when a prompt plus max_completion_length does not fit the model's positions.

    Only prompts that could be too long are tokenized: a token covers at least one byte of the rendered text
    (byte-level BPE, SentencePiece with byte fallback, word-level), so a prompt of fewer bytes than the room, template
    included, fits. A dataset of ordinary prompts costs a byte count per prompt.
    """
    if max_positions is None or not len(prompts):
        return
    room = max_positions - max_completion_length
    kwargs = dict(add_generation_prompt=True, **(chat_template_kwargs or {}))
    empty = [{"role": "user", "content": ""}]
    overhead = len(tokenizer.apply_chat_template(empty, tokenize=False, **kwargs).encode()) \
        if getattr(tokenizer, "chat_template", None) else 0
    counts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            if len(prompt.encode()) + 8 > room:
                counts.append(len(tokenizer(prompt)["input_ids"]))
        elif sum(len(str(m.get("content", "")).encode()) for m in prompt) + (overhead + 8) * len(prompt) > room:
            ids = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True, **kwargs)["input_ids"]
            counts.append(len(ids))
    too_long = [n for n in counts if n > room]
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(prompts)} prompts do not fit the model with max_completion_length="
            f"{max_completion_length}: the longest is {max(too_long)} tokens, and the model has "
            f"max_position_embeddings={max_positions} (prompt + completion must fit, so prompts may have {room}). "
            "Shorten or drop the long prompts, or lower max_completion_length."
        )
