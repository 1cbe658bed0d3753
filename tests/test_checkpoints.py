"""Checkpoint rules (disco_trl.checkpoints): a kill while a checkpoint is written, a checkpoint without DisCO's state,
a resume with other batch settings, and a new run over an earlier run's checkpoints.

One interrupted run is shared: 2 updates per generation, a checkpoint after every update, killed while writing
checkpoint-3 (checkpoint-1 and -2 are complete). Each test works on its own copy.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import struct
import subprocess
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_resume import make_trainer
from test_scripts import parse, run_main, tiny_run_args
from transformers.trainer_callback import TrainerState

from disco_trl.checkpoints import (
    CheckpointError,
    DamagedState,
    DiskFullError,
    ResumeWarning,
    RunFinished,
    full_disk_error,
    incomplete_reasons,
    last_complete_checkpoint,
    load_rank_state,
    refuse_finished_run,
    save_rank_state,
    state_path,
)
from disco_trl.checkpoints import state as state_module
from disco_trl.geometry import BatchGeometry
from disco_trl.scripts import train as train_script


STEPS = 4


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def straight_parameters(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("straight"), save_strategy="no", max_steps=STEPS)
    trainer.train()
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """An output_dir whose run was killed half-way through writing checkpoint-3's trainer_state.json."""
    out = tmp_path_factory.mktemp("killed")
    original = TrainerState.save_to_json

    def save_then_die(self, json_path):
        if "checkpoint-3" in json_path:
            with open(json_path, "w") as f:
                f.write(json.dumps({"global_step": 3})[:10])
            raise Killed
        original(self, json_path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainerState, "save_to_json", save_then_die)
        with pytest.raises(Killed):
            make_trainer(out, save_steps=1, max_steps=STEPS).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    return out


@pytest.fixture
def run_dir(killed_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(killed_run, copy)
    return copy


def assert_same_parameters(model, parameters):
    for p, q in zip(model.parameters(), parameters):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ------------------------------------------------------------------ D: `last` skips a checkpoint cut short
def test_resume_last_skips_the_checkpoint_a_kill_cut_short_and_stays_bit_exact(run_dir, straight_parameters):
    resumed = make_trainer(run_dir, save_steps=1, max_steps=STEPS)
    with pytest.warns(ResumeWarning, match=r"skipping checkpoint-3, which is incomplete \(trainer_state.json is "
                                           r"truncated.*resuming from checkpoint-2"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == STEPS
    assert_same_parameters(resumed.model, straight_parameters)


def test_script_resume_last_picks_the_newest_complete_checkpoint(run_dir, tmp_path):
    # as make_trainer's: the batch settings and the sampling temperature
    same_batches = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--temperature", "1.0",
                    "--max_steps", str(STEPS), "--seed", "5"]
    _, args, _ = parse(tiny_run_args(tmp_path / "model", tmp_path / "data.jsonl", run_dir, *same_batches,
                                     "--resume_from_checkpoint", "last"))
    with pytest.warns(ResumeWarning, match="skipping checkpoint-3"):
        train_script.resolve_resume_setting(args)
    assert args.resume_from_checkpoint == str(run_dir / "checkpoint-2")


def flip_bytes_in_largest_record(path):
    """Flip a few bits in the middle of the largest tensor of a torch (zip) file: its structure stays readable."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
    for i in range(start, start + 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


class RunsCode:
    """A pickled object whose loading runs code (here: writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


DAMAGES = {  # what is done to checkpoint-2, and the reason `last` gives for skipping it
    "trainer_state": ("no trainer_state.json", lambda f: (f / "trainer_state.json").unlink()),
    "weights": ("truncated weights ['model.safetensors']",
                lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100])),
    "disco_state": ("no DisCO state (disco_state_rank*.pt)", lambda f: (f / "disco_state_rank0.pt").unlink()),
    # transformers loads optimizer.pt only when scheduler.pt is there too: Adam would silently restart from zero
    "scheduler": ("no scheduler.pt", lambda f: (f / "scheduler.pt").unlink()),
    "rng_state": ("no rng_state.pth", lambda f: (f / "rng_state.pth").unlink()),  # transformers: info level only
    "optimizer": ("no optimizer.pt", lambda f: (f / "optimizer.pt").unlink()),
    "optimizer_truncated": ("optimizer.pt is damaged (truncated or corrupt)",
                            lambda f: (f / "optimizer.pt").write_bytes((f / "optimizer.pt").read_bytes()[:-200])),
    "rng_state_flipped": ("rng_state.pth is damaged", lambda f: flip_bytes_in_largest_record(f / "rng_state.pth")),
    "disco_state_flipped": ("disco_state_rank0.pt is damaged",
                            lambda f: flip_bytes_in_largest_record(f / "disco_state_rank0.pt")),
    "disco_state_rewritten": ("disco_state_rank0.pt is damaged (its checksum does not match its contents)",
                              lambda f: rewrite_old_logps(f / "disco_state_rank0.pt")),
}


def rewrite_old_logps(path):
    """DisCO's state with other old-policy log-probs, written as a whole file (so its CRCs match): only the checksum
    can tell."""
    state = torch.load(path, weights_only=True)
    batch = next(b for b in state["buffered_inputs"] if b.get("old_per_token_logps") is not None)
    batch["old_per_token_logps"] = batch["old_per_token_logps"] - 2.0
    torch.save(state, path)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_what_makes_a_checkpoint_incomplete(run_dir, damage):
    folder = run_dir / "checkpoint-2"
    reason, do = DAMAGES[damage]
    do(folder)
    with pytest.warns(ResumeWarning) as record:
        assert last_complete_checkpoint(str(run_dir), world_size=1) == str(run_dir / "checkpoint-1")
    assert incomplete_reasons(str(run_dir / "checkpoint-1"), world_size=1) == []
    messages = [str(w.message) for w in record]
    assert any("skipping checkpoint-2" in m and reason in m for m in messages), messages


@pytest.mark.parametrize("damage", ["scheduler", "rng_state", "optimizer", "optimizer_truncated",
                                    "disco_state_flipped", "disco_state_rewritten"])
def test_an_explicit_incomplete_checkpoint_is_refused_naming_the_file(run_dir, damage):
    folder = run_dir / "checkpoint-2"
    reason, do = DAMAGES[damage]
    do(folder)
    trainer = make_trainer(run_dir, save_steps=1, max_steps=STEPS)
    with pytest.raises(CheckpointError) as err:
        trainer.train(resume_from_checkpoint=str(folder))
    message = str(err.value)
    assert f"resume_from_checkpoint='{folder}' is incomplete (" in message and reason in message
    assert "finished run" not in message and "\n" not in message
    assert trainer.state.global_step == 0


def test_the_script_names_a_missing_optimizer_state_not_a_finished_run(run_dir, tmp_path, capsys):
    (run_dir / "checkpoint-2" / "optimizer.pt").unlink()
    args = tiny_run_args(tmp_path / "no-model", tmp_path / "data.jsonl", run_dir, "--max_steps", str(STEPS),
                         "--resume_from_checkpoint", str(run_dir / "checkpoint-2"))
    code, _, err = run_main(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "is incomplete (no optimizer.pt)" in err and "finished run" not in err


@pytest.mark.parametrize("damage", ["optimizer_truncated", "disco_state_rewritten"])
def test_resume_last_falls_back_past_a_damaged_checkpoint_and_stays_bit_exact(run_dir, straight_parameters, damage):
    """A truncated optimizer state crashed the resume with a torch traceback; DisCO's state with flipped bits trained
    on garbage (disco/kl -2.35 instead of 0.0003). `last` now resumes from checkpoint-1, as if checkpoint-2 was never
    written."""
    reason, do = DAMAGES[damage]
    do(run_dir / "checkpoint-2")
    resumed = make_trainer(run_dir, save_strategy="no", max_steps=STEPS)
    with pytest.warns(ResumeWarning, match=rf"skipping checkpoint-2, which is incomplete \(.*{re.escape(reason)}"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == STEPS
    assert_same_parameters(resumed.model, straight_parameters)


def test_a_pickled_payload_in_discos_state_is_refused_and_never_run(run_dir, tmp_path):
    """DisCO's state is read with torch.load(weights_only=True): a state file holding an object whose loading would
    run code (a checkpoint from someone else) is refused, and the code does not run."""
    marker = tmp_path / "code-ran"
    folder = run_dir / "checkpoint-2"
    state = torch.load(state_path(str(folder), 0), weights_only=True)
    torch.save(dict(state, step=RunsCode(marker)), state_path(str(folder), 0))
    with pytest.raises(DamagedState, match=r"disco_state_rank0.pt holds more than plain data \(it names \w+\).*"
                                           r"could run code"):
        load_rank_state(str(folder), 0)
    with pytest.raises(CheckpointError, match=r"is incomplete \(disco_state_rank0.pt holds more than plain data"):
        make_trainer(run_dir, max_steps=STEPS).train(resume_from_checkpoint=str(folder))
    with pytest.warns(ResumeWarning, match=r"skipping checkpoint-2, .*holds more than plain data"):
        assert last_complete_checkpoint(str(run_dir), world_size=1) == str(run_dir / "checkpoint-1")
    assert not marker.exists()
    torch.load(state_path(str(folder), 0), weights_only=False)  # what loading it used to do
    assert marker.read_text() == "code ran"


def test_discos_state_holds_only_plain_data_and_refuses_anything_else(tmp_path):
    geometry = BatchGeometry(num_processes=1, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                             steps_per_generation=1, num_generations=4, generation_batch_size=4)
    save_rank_state(str(tmp_path), 0, 3, [{"completion_ids": torch.ones(4, 2, dtype=torch.long)}], geometry,
                    {"lr_scheduler_type": "constant"}, sampler={"position": 7, "order": [3, 1, 2]})
    state = load_rank_state(str(tmp_path), 0)
    assert state["step"] == 3 and state["sampler"] == {"position": 7, "order": [3, 1, 2]} and state["format"] == 2
    with pytest.raises(TypeError, match="may hold only dicts, lists, tuples, str, int, float, bool, None and tensors"):
        save_rank_state(str(tmp_path), 1, 3, [], geometry, sampler=RunsCode(tmp_path / "x"))


def test_last_with_no_complete_checkpoint_is_refused_with_the_reasons(run_dir):
    for folder in run_dir.glob("checkpoint-*"):
        (folder / "disco_state_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"holds no complete checkpoint \(checkpoint-3: trainer_state.json is "
                                              r"truncated; no DisCO state.*checkpoint-1: no DisCO state"):
        last_complete_checkpoint(str(run_dir), world_size=1)


def test_checkpoint_of_other_processes_is_refused_with_both_world_sizes(run_dir):
    folder = run_dir / "checkpoint-2"
    shutil.copy(state_path(str(folder), 0), state_path(str(folder), 1))  # as if saved by 2 processes
    trainer = make_trainer(run_dir, save_steps=1, max_steps=STEPS)
    expected = r"DisCO state of 2 processes \(world_size=2\), this run has world_size=1"
    with pytest.raises(CheckpointError, match=expected):
        trainer.train(resume_from_checkpoint=str(folder))


# ------------------------------------------------------------------ E: no DisCO state: resume, but say it
def test_resume_without_discos_state_warns_that_it_is_not_bit_exact(run_dir, straight_parameters):
    checkpoint = run_dir / "checkpoint-1"  # step 1: the generation batch of steps 1-2 is half used
    (checkpoint / "disco_state_rank0.pt").unlink()
    resumed = make_trainer(run_dir, save_strategy="no", max_steps=STEPS)
    with pytest.warns(ResumeWarning, match=r"no DisCO state for this process.*regenerates the current generation "
                                           r"batch.*NOT be bit-exact"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == STEPS
    # what the warning says: the run diverged from the uninterrupted one
    assert any(not torch.equal(p, q) for p, q in zip(resumed.model.parameters(), straight_parameters))


# ------------------------------------------------------------------ F: other batch settings than the checkpoint's
@pytest.mark.parametrize("legacy", [False, True], ids=["geometry-saved", "legacy-state"])
def test_resume_with_another_steps_per_generation_is_refused_with_both_values(run_dir, legacy):
    checkpoint = run_dir / "checkpoint-1"
    if legacy:  # a state file written before DisCO recorded the geometry (or a checksum): the buffer itself tells
        path = state_path(str(checkpoint), 0)
        state = torch.load(path, weights_only=True)
        del state["geometry"], state["checksum"]
        torch.save(state, path)
    trainer = make_trainer(run_dir, save_steps=1, max_steps=STEPS, steps_per_generation=4)
    with pytest.raises(CheckpointError, match=r"checkpoint-1 was saved with steps_per_generation=2, but this run has "
                                              r"steps_per_generation=4"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0


def test_resume_with_another_gradient_accumulation_is_refused(run_dir):
    trainer = make_trainer(run_dir, save_steps=1, max_steps=STEPS, gradient_accumulation_steps=2)
    with pytest.raises(CheckpointError, match=r"saved with gradient_accumulation_steps=1, but this run has "
                                              r"gradient_accumulation_steps=2"):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))


# ------------------------------------------------------------------ C: a new run over an earlier run's checkpoints
def test_new_run_over_earlier_checkpoints_is_refused(run_dir):
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    trainer = make_trainer(run_dir, save_steps=1, max_steps=STEPS)
    with pytest.raises(CheckpointError) as err:
        trainer.train()
    message = str(err.value)
    assert "already holds checkpoints of an earlier run (checkpoint-3, checkpoint-2, checkpoint-1)" in message
    assert "--resume_from_checkpoint last" in message and "--overwrite_output_dir" in message
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before


def test_overwrite_output_dir_starts_over_and_deletes_the_earlier_checkpoints(run_dir):
    trainer = make_trainer(run_dir, save_steps=1, max_steps=1, overwrite_output_dir=True)
    trainer.train()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1"]  # the new run's
    assert json.loads((run_dir / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1


def test_script_refuses_a_new_run_or_other_batches_over_earlier_checkpoints_before_the_model_loads(
        run_dir, tmp_path, capsys):
    # The model does not exist: had the refusal come later, the message would be about the model.
    code, _, err = run_main(tiny_run_args(tmp_path / "no-model", tmp_path / "data.jsonl", run_dir), capsys)
    assert code == 2
    assert "already holds checkpoints of an earlier run" in err and "--overwrite_output_dir" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        code, _, err = run_main(tiny_run_args(tmp_path / "no-model", tmp_path / "data.jsonl", run_dir,
                                              "--resume_from_checkpoint", "last", "--max_steps", str(STEPS)), capsys)
    # resuming passes that check, but this command's batches are not the checkpoint's (F, through the script)
    assert code == 2 and "checkpoint-2 was saved with per_device_train_batch_size=8, gradient_accumulation_steps=1, " \
        "steps_per_generation=2, but this run has per_device_train_batch_size=4, gradient_accumulation_steps=2, " \
        "steps_per_generation=4" in err
    assert err.count("\n") == 1


@pytest.fixture(params=["256k", "1m"])
def small_disk(request, tmp_path):
    """A small file system (tmpfs). 256 KiB: not even the tiny model's weights fit (refused before writing);
    1 MiB: the weights fit, AdamW's state does not (Trainer's save fails half-way)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(mount)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount, request.param
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_save_is_named_as_such(small_disk):
    mount, size = small_disk
    trainer = make_trainer(mount / "run", save_steps=1, max_steps=2)
    with pytest.raises(OSError, match=r"needs at least [\d.]+ MiB .* only [\d.]+ MiB are free .*: the disk is full"):
        trainer.train()
    if size == "256k":  # refused before anything was written
        assert not list((mount / "run").glob("checkpoint-*/model.safetensors"))
    # what was written is no complete checkpoint: `last` would skip it
    assert all(incomplete_reasons(str(f), 1) for f in (mount / "run").glob("checkpoint-*"))


@pytest.mark.parametrize("small_disk", ["256k"], indirect=True)  # the script's tiny model fits in 1 MiB
def test_the_script_names_a_full_disk_in_one_line(small_disk, tiny_model_dir, math_jsonl, capsys):
    mount, _ = small_disk
    args = tiny_run_args(tiny_model_dir, math_jsonl, mount / "run", "--save_strategy", "steps", "--save_steps", "1")
    code, _, err = run_main(args, capsys)
    assert code == 1, err
    *_, last = re.split(r"[\r\n]", err.rstrip("\n"))  # after the model's loading and training bars
    assert last.startswith("disco-trl train: error: A checkpoint in ") and "the disk is full" in last, err
    assert "Traceback" not in err


@pytest.mark.parametrize("error,named", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file"), True),
    (RuntimeError("basic_ios::clear: iostream error"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("[/gloo/transport/tcp/pair.cc:534] Connection closed by peer"), False),
    (OSError(errno.ENOENT, "No such file or directory"), False),
])
def test_only_a_failed_write_is_told_as_a_full_disk(tmp_path, monkeypatch, error, named):
    """On a disk too small for a checkpoint, a failed write becomes the full-disk message; any other error (out of
    memory, a lost process) keeps its own, whatever the free space."""
    trainer = make_trainer(tmp_path / "run")
    monkeypatch.setattr(state_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=1024))
    full = full_disk_error(str(tmp_path / "run"), trainer, error)
    assert isinstance(full, DiskFullError) if named else full is None


def test_a_finished_run_is_not_resumed_past_its_end_from_python(run_dir, tmp_path):
    """checkpoint-2 is the newest complete one: for a run of max_steps=2 the run is done, and train() says so
    (RunFinished) before anything loads or is written, instead of training a step past the end."""
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    trainer = make_trainer(run_dir, save_steps=1, max_steps=2)
    with pytest.raises(RunFinished, match=r"^already finished at step 2 \(.*checkpoint-2/trainer_state.json records "
                                          r"global_step 2, and this run stops at max_steps=2\)"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before


@pytest.mark.parametrize("epoch,finished", [(1.0, True), (0.5, False)])
def test_an_epoch_based_run_is_finished_when_its_epochs_are_done(tmp_path, epoch, finished):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 6, "epoch": epoch}))
    args = SimpleNamespace(max_steps=-1, num_train_epochs=1.0)
    if finished:
        with pytest.raises(RunFinished, match=r"already finished at step 6 .*num_train_epochs=1.0"):
            refuse_finished_run(args, str(tmp_path))
    else:
        refuse_finished_run(args, str(tmp_path))
