"""DisCO's checkpoints: what DisCO adds to Trainer's, what makes one complete, and which one a run resumes from.

TRL keeps the generation batch in memory and restarts its micro-step counter at 0 on resume, so a run resumed in the
middle of a generation batch would sample new completions. `DiscoTrainer` therefore saves, with each checkpoint, one
file per process, `disco_state_rank{r}.pt`: the buffered generation batch, the micro-step counter, the batch
geometry they were cut with, the run's settings and its training set's fingerprint. With the RNG state that Trainer
already restores, a resumed run continues exactly where it stopped.

**Complete checkpoint.** A `checkpoint-N` folder is complete when every file a resume reads is there and whole:

1. `trainer_state.json`, readable JSON (Trainer writes it last; DisCO writes its own files before Trainer's);
2. the model weights: one of transformers' weights files (`model.safetensors`, `pytorch_model.bin`, their sharded
   `.index.json` with every shard, or a PEFT `adapter_model.*`), a DeepSpeed `global_step*` folder or an FSDP state,
   none of them truncated (safetensors headers and zip archives are checked, not their contents);
3. the optimizer and scheduler states, `optimizer.pt` and `scheduler.pt` (transformers loads neither unless both are
   there: Adam would restart from zero); under DeepSpeed, `latest` and the `global_step*` folder it names, with every
   process's optimizer state and the model states (`scheduler.pt` only checked when present: DeepSpeed may keep its
   own); with FSDP, an `optimizer*` folder;
4. every process's RNG state, `rng_state.pth` (one process) or `rng_state_{r}.pth` (without it transformers resumes,
   silently not exactly);
5. `disco_state_rank{r}.pt` for every process r of this run, readable as plain data and matching its checksum
   (`state_file`).

Torch files are checked cheaply: their zip directory must read, and one of up to 64 MiB must match its CRCs (an
optimizer state of many GB is not read in full for this).

**Which checkpoint.** `resume_from_checkpoint=True` (Python) or `last` (script, also Python) resumes from the newest
complete checkpoint, warning about every newer one it skips and why. An explicit path must be complete too (refused
in one line naming each missing or damaged file), except that it may lack DisCO's state entirely: without any (a
checkpoint of another trainer, or one interrupted before DisCO saved), the run resumes with a warning that it
regenerates the current generation batch and so is not bit-exact with an uninterrupted run. The batch geometry must be
the one the checkpoint was saved with.

**A finished run.** When the run to resume already reached its end (max_steps, or num_train_epochs with
max_steps=-1), according to the final model's `trainer_state.json` in output_dir (with `last`) or the checkpoint's,
`RunFinished` is raised before anything loads: resuming would train past the end and overwrite the final model. The
training script exits 0 with one line, "already finished at step N" (a requeued job of a finished run).

**Lost work.** A run without `resume_from_checkpoint` in an `output_dir` that already holds `checkpoint-N` folders is
refused, unless `overwrite_output_dir=True`, which deletes them when training starts. A step whose loss or gradient
norm is NaN or inf stops the run before anything of it is saved (`finite`).

**Settings changed on resume.** A resumed run compares its settings with the ones the checkpoint recorded: the
method, the positives, the buffered generation batch or the data order (`seed`) must not change mid-run
(`state.REFUSED_ON_RESUME`, refused); the optimizer's hyperparameters, DisCO's objective weights and the other
sampling settings are honoured from the resumed step on and reported in one warning (`state.HONOURED_ON_RESUME`; the
optimizer's are written into the restored optimizer and scheduler, whose saved state would otherwise keep the old
values), and so are `logging_steps`, `eval_steps` and `save_steps` (Trainer would take the checkpoint's). Another
training set than the checkpoint's (by its fingerprint: length and up to 256 prompts) is named in a warning.
docs/training.md lists all of them.

`state_file`: DisCO's per-process state file (plain data, a checksum, safe loading); `state`: the settings rules and
the Trainer callback that saves and restores the state; `folders`: complete checkpoints, which one to resume from, the
refusals of a new run and of a finished one; `finite`: the stop at a non-finite loss or gradient norm.
"""

from .finite import NonFiniteError, NonFiniteGuard
from .folders import (
    check_explicit_checkpoint,
    checkpoint_folders,
    incomplete_reasons,
    last_complete_checkpoint,
    refuse_finished_run,
    refuse_to_overwrite,
    remove_checkpoints,
    resolve_resume,
    resolve_resume_for_trainer,
)
from .state import DiscoStateCallback, DiskFullError, ResumeWarning, RunFinished, full_disk_error
from .state_file import (
    STATE_FILE,
    CheckpointError,
    DamagedState,
    dataset_fingerprint,
    load_rank_state,
    save_rank_state,
    state_path,
)
