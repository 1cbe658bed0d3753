"""One bound on every wait for another process of a distributed run: `ddp_timeout`.

A process that dies closes its connections, and the others fail at their next collective within seconds. A process
(or machine) that hangs or drops off the network closes nothing: the others wait in their collective until its
timeout. transformers gives `ddp_timeout` (TrainingArguments, default 1800 s) to the default process group on GPU,
but not under `use_cpu`, and DeepSpeed runs ZeRO's collectives on its own copy of the world group, which torch
creates with its default timeout (10 min for NCCL, 30 min for gloo) whatever `ddp_timeout` says. `CollectiveTimeout`
sets `ddp_timeout` on every process group when training starts, so that one setting bounds every wait; the training
script turns the resulting communication error into one line (`lost_peer_message`).
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import torch
from torch.distributed import distributed_c10d as c10d
from transformers import TrainerCallback


def process_groups() -> list:
    """Every process group of this process (the default one first), or [] outside a distributed run."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return []
    default = c10d._get_default_group()
    return [default] + [g for g in c10d._world.pg_map if g is not default]


def bound_collective_waits(seconds: float) -> tuple[int, list[str]]:
    """Set a timeout of `seconds` on every process group: how many were set, and why the others were not."""
    done, skipped = 0, []
    for group in process_groups():
        try:
            c10d._set_pg_timeout(timedelta(seconds=seconds), group)
            done += 1
        except (AttributeError, TypeError, ValueError, RuntimeError, AssertionError) as err:
            skipped.append(f"{type(err).__name__}: {err}")  # a torch without this private API, a foreign group
    return done, skipped


class CollectiveTimeout(TrainerCallback):
    """At the start of training (after DeepSpeed has created its groups), apply `args.ddp_timeout` to all of them."""

    def on_train_begin(self, args, state, control, **kwargs):
        _, skipped = bound_collective_waits(args.ddp_timeout)
        if skipped:
            warnings.warn(f"could not set ddp_timeout={args.ddp_timeout} s on {len(skipped)} process group(s) "
                          f"({skipped[0]}); waits there are bounded by torch's default timeout instead", stacklevel=2)


# What torch's communication backends say when another process of the run is gone or does not answer.
_LOST_PEER_MARKERS = ("/gloo/", "Connection reset by peer", "Connection closed by peer", "Broken pipe",
                      "Timed out waiting", "remote process exited", "NCCL communicator was aborted")


def lost_peer_message(err: BaseException, ddp_timeout: float) -> str | None:
    """One line for an error that means another process of the run died or stopped answering, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    text = str(err).strip()
    if not (isinstance(err, getattr(dist, "DistError", ())) or any(m in text for m in _LOST_PEER_MARKERS)):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    first = first.split("] ", 1)[1] if first.startswith("[") and "] " in first else first  # drop the source path
    first = first.split(". ", 1)[0].rstrip(".")  # gloo adds generic advice after its first sentence
    return (f"process {dist.get_rank()} of {dist.get_world_size()} lost contact with another process of this run "
            f"({first}). Another process or machine died or stopped answering; its own log names the cause. A process "
            f"that stops answering is waited for at most ddp_timeout={ddp_timeout:g} s (--ddp_timeout SECONDS). "
            "Restart the same launch on every machine with --resume_from_checkpoint last to continue.")
