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


**Settings changed on resume.** A resumed run compares its settings with the ones the checkpoint recorded: the
method, the positives or the buffered generation batch must not change mid-run (`state.REFUSED_ON_RESUME`, refused);
the optimizer's hyperparameters, DisCO's objective weights and the other sampling settings are honoured from the
resumed step on and reported in one warning (`state.HONOURED_ON_RESUME`; the optimizer's are written into the
restored optimizer and scheduler, whose saved state would otherwise keep the old values). docs/training.md lists both.

`state`: DisCO's per-process state, the settings rules and the Trainer callback that saves and restores them;
`folders`: complete checkpoints, which one to resume from, the refusals of a new run.
"""

from .folders import (
    check_explicit_checkpoint,
    checkpoint_folders,
    incomplete_reasons,
    last_complete_checkpoint,
    refuse_to_overwrite,
    remove_checkpoints,
    resolve_resume,
    resolve_resume_for_trainer,
)
from .state import (
    STATE_FILE,
    CheckpointError,
    DiscoStateCallback,
    DiskFullError,
    ResumeWarning,
    full_disk_error,
    load_rank_state,
    save_rank_state,
    state_path,
)
