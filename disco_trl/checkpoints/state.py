"""DisCO's state in a checkpoint: when `DiscoTrainer` saves it (one file per process, `state_file`), how it is
restored, and what a resumed run does with settings changed since (see `disco_trl.checkpoints`)."""

from __future__ import annotations

import enum
import errno
import os
import shutil
import warnings
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..geometry import BatchGeometry
from .state_file import (
    STATE_FILE,
    CheckpointError,
    dataset_change_warning,
    dataset_fingerprint,
    load_rank_state,
    save_rank_state,
    state_path,
)


logger = logging.get_logger(__name__)


TRAINER_STATE_FILE = "trainer_state.json"


class DiskFullError(OSError):
    """A checkpoint that its disk cannot hold. The message (one line) names the sizes and what to do."""


class ResumeWarning(UserWarning):
    """A resumed run that will not continue exactly where the interrupted one stopped, or a skipped checkpoint."""


class RunFinished(Exception):
    """`resume_from_checkpoint` names a run that already reached its end (max_steps, or num_train_epochs). The message
    (one line, starting with "already finished at step N") says so; nothing is loaded or written."""

    def __init__(self, step: int, where: str, limit: str):
        super().__init__(
            f"already finished at step {step} ({where} records global_step {step}, and this run stops at {limit}): "
            "nothing to resume, nothing was changed. To train longer, raise max_steps (or num_train_epochs); to start "
            "over, pass --overwrite_output_dir (overwrite_output_dir=True)."
        )
        self.step = step


def checkpoint_size_lower_bound(trainer) -> int:
    """Bytes a checkpoint holds at the least: the model's weights (the adapter's, with PEFT) and AdamW's two moments
    of every trained parameter (unless save_only_model)."""
    params = list(trainer.model.parameters())

    def nbytes(p):
        return getattr(p, "ds_numel", p.numel()) * p.element_size()

    trainable = sum(nbytes(p) for p in params if p.requires_grad)
    weights = trainable if getattr(trainer.model, "peft_config", None) else sum(nbytes(p) for p in params)
    return weights + (0 if trainer.args.save_only_model else 2 * trainable * ("adam" in str(trainer.args.optim)))


def _existing(folder: str) -> str:
    return next(str(p) for p in (Path(folder), *Path(folder).parents) if p.is_dir())


# What a failed write says: Python's errno, torch's C++ writers (a full disk in torch.save or safetensors)
_WRITE_FAILURES = ("No space left", "Disk quota exceeded", "iostream error", "PytorchStreamWriter failed",
                   "file write failed", "unexpected pos")


def is_write_failure(err: BaseException) -> bool:
    """Whether `err` is a failed write to disk (and not, say, an out-of-memory or a lost process)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(err) for marker in _WRITE_FAILURES)


def full_disk_error(folder: str, trainer, err: BaseException | None = None) -> DiskFullError | None:
    """A DiskFullError when the disk of `folder` cannot hold a checkpoint and `err` (if given: the error a save
    raised) is a failed write; else None: any other error keeps its own message, whatever the free space."""
    if err is not None and not is_write_failure(err):
        return None
    needed, free = checkpoint_size_lower_bound(trainer), shutil.disk_usage(_existing(folder)).free
    if free >= needed:
        return None
    return DiskFullError(
        f"A checkpoint in {folder} needs at least {needed / 2**20:.1f} MiB (model weights and optimizer state), but "
        f"only {free / 2**20:.1f} MiB are free on the disk of {_existing(folder)}: the disk is full. Free space, keep "
        "fewer checkpoints (save_total_limit) or save to a larger disk; the previous checkpoint is intact."
    )


def check_free_space(folder: str, trainer) -> None:
    """Raise before a checkpoint is written when its disk cannot hold even the least a checkpoint takes."""
    error = full_disk_error(folder, trainer)
    if error is not None:
        raise error


# ------------------------------------------------------------------------------------- settings changed on resume
# What a resumed run does with a setting changed since the checkpoint. Refused: the method, which completions are
# positives, the buffered generation batch (cut by the batch settings, its pi_old log-probabilities taken at the
# sampling temperature) or the order of the training data (the sampler's seed and shuffling: a new seed mid-epoch
# trains some questions twice and others never) would change mid-run. Honoured (and reported once): the optimizer's
# hyperparameters (written into the restored optimizer, whose saved state would otherwise keep the old values), DisCO's
# objective weights and the other sampling settings (read from the arguments at every step / generation), and the
# logging, eval and save intervals (which Trainer would otherwise take from the checkpoint's trainer_state.json).
REFUSED_ON_RESUME = ("score_type", "disco_variant", "reward_threshold", "reward_weights",
                     "multi_objective_aggregation", "mask_truncated_completions", "skip_uninformative_questions",
                     "lr_scheduler_type", "optim", "kl_penalty", "temperature", "seed", "shuffle_dataset",
                     "fill_informative_questions")


OPTIMIZER_SETTINGS = {"learning_rate": "lr", "weight_decay": "weight_decay", "adam_epsilon": "eps"}


HONOURED_ON_RESUME = (*OPTIMIZER_SETTINGS, "adam_beta1", "adam_beta2", "tau", "kl_delta", "kl_beta", "kl_estimator",
                      "top_p", "top_k", "min_p", "repetition_penalty", "generation_kwargs", "max_completion_length",
                      "max_generation_rounds")


def _plain(value):
    """A setting as plain data (an enum such as transformers' SchedulerType as its value), which the state file
    can hold."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):  # a subclass (numpy's float64...) as the plain type
        if isinstance(value, kind):
            return kind(value)
    return None if value is None else repr(value)  # anything else (a dtype, an object): compared by its text


def run_settings(args) -> dict:
    """The settings a checkpoint records (plain data), to compare with a run that resumes from it."""
    return {name: _plain(getattr(args, name, None)) for name in REFUSED_ON_RESUME + HONOURED_ON_RESUME}


def changed_settings(checkpoint: str, saved: dict | None, args) -> dict[str, tuple]:
    """{name: (saved, now)} of the honoured settings that changed; CheckpointError for a refused one."""
    if not saved:
        return {}  # a checkpoint of an older disco-trl, which did not record them
    now = run_settings(args)
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
    refused = {k: v for k, v in changed.items() if k in REFUSED_ON_RESUME}
    if refused:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise CheckpointError(
            f"{checkpoint} was trained with other settings that a resumed run cannot change ({listed}): they decide "
            "the method, the positives, the buffered generation batch (its cut, its sampling temperature) or the "
            "order of the training data (seed, shuffle_dataset: a new order mid-epoch trains some questions twice and "
            "others never). Resume "
            f"with the checkpoint's values, or start a new run from its weights (model_name_or_path={checkpoint}) in "
            "another output_dir."
        )
    return changed


def apply_changed_settings(trainer, changed: dict[str, tuple]) -> None:
    """Write the changed optimizer hyperparameters into the restored optimizer and scheduler, and say what changed."""
    rescale = _rescaling(*changed["learning_rate"]) if "learning_rate" in changed else None
    for group in getattr(trainer.optimizer, "param_groups", []):
        for name, key in OPTIMIZER_SETTINGS.items():
            if name in changed and key in group:
                group[key] = rescale(group[key]) if name == "learning_rate" else changed[name][1]
        if "initial_lr" in group and rescale is not None:
            group["initial_lr"] = rescale(group["initial_lr"])
        if "betas" in group and {"adam_beta1", "adam_beta2"} & set(changed):
            group["betas"] = (trainer.args.adam_beta1, trainer.args.adam_beta2)
    scheduler = trainer.lr_scheduler
    if rescale is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [rescale(lr) for lr in scheduler.base_lrs]
        # what get_last_lr() reports (and Trainer logs) until the scheduler's next step
        scheduler._last_lr = [group["lr"] for group in trainer.optimizer.param_groups]
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
    logger.warning(f"Resumed with changed settings, applied from this step on: {listed}.")


def _rescaling(old: float, new: float):
    """How a changed learning rate maps a saved rate (the schedule's current value, its base): by new / old, so the
    schedule keeps its shape; from a saved rate of 0 (no shape to keep), to the new rate itself."""
    if old:
        return lambda lr: lr * (new / old)
    return lambda lr: new


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


STEP_INTERVALS = ("logging_steps", "eval_steps", "save_steps")


def honour_step_intervals(args, state) -> dict[str, tuple]:
    """Trainer restores logging_steps, eval_steps and save_steps from the checkpoint's trainer_state.json, silently
    replacing the ones this run was given: put this run's back. Returns {name: (checkpoint's, this run's)} changed."""
    before = {name: getattr(state, name, None) for name in STEP_INTERVALS}
    state.compute_steps(args, state.max_steps)
    return {name: (before[name], getattr(state, name)) for name in STEP_INTERVALS
            if before[name] is not None and before[name] != getattr(state, name)}


def missing_state_warning(checkpoint: str, rank: int) -> str:
    return (
        f"Resuming from {checkpoint}, which has no DisCO state for this process ({STATE_FILE.format(rank)}): it was "
        "written by another trainer, or its save was interrupted. The run regenerates the current generation batch "
        "instead of continuing the buffered one, so it will NOT be bit-exact with an uninterrupted run: its "
        "completions, and hence its parameters, differ from this step on."
    )


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
        self._fingerprint: dict | None = None  # of the training set, computed once per run (at the first save)

    def _folder(self, args, state) -> str:
        return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _save(self, args, state) -> None:
        trainer = self.trainer
        check_free_space(self._folder(args, state), trainer)
        geometry = BatchGeometry.from_args(args, trainer.accelerator.num_processes)
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(trainer.train_dataset) or {}
        filler = getattr(trainer, "batch_filler", None)
        save_rank_state(self._folder(args, state), trainer.accelerator.process_index, trainer._step,
                        trainer._buffered_inputs, geometry, run_settings(args), dataset=self._fingerprint or None,
                        prompt_stream=None if filler is None else filler.state_dict())

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
            changed = honour_step_intervals(args, state)
            self._restore(self.resume_from, changed)

    def _restore(self, checkpoint: str, changed: dict[str, tuple]) -> None:
        trainer = self.trainer
        rank = trainer.accelerator.process_index
        saved = load_rank_state(checkpoint, rank, trainer.accelerator.device)
        if saved is None:  # a checkpoint of another trainer: TRL's behaviour (regenerate) applies
            warnings.warn(missing_state_warning(checkpoint, rank), ResumeWarning, stacklevel=2)
        else:
            if "checksum" not in saved:
                warnings.warn(f"{state_path(checkpoint, rank)} was written by an older disco-trl, without a checksum: "
                              "it is read, but cannot be verified.", ResumeWarning, stacklevel=2)
            check_geometry(checkpoint, saved, BatchGeometry.from_args(trainer.args, trainer.accelerator.num_processes))
            changed = {**changed_settings(checkpoint, saved.get("settings"), trainer.args), **changed}
            other_data = dataset_change_warning(checkpoint, saved.get("dataset"),
                                                dataset_fingerprint(trainer.train_dataset))
            if other_data:
                warnings.warn(other_data, ResumeWarning, stacklevel=2)
            trainer._step = saved["step"]
            trainer._buffered_inputs = saved["buffered_inputs"]
            filler = getattr(trainer, "batch_filler", None)
            if filler is not None:
                filler.load_state_dict(saved.get("prompt_stream"))
        if changed:
            apply_changed_settings(trainer, changed)
