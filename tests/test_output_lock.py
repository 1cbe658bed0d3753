"""One run per output folder: a second training (or a run started while another holds the folder) is refused with
one line; the lock of a run that was killed does not block the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disco_testing import parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from test_config_refusals import _holding
from test_scripts import tiny_run_args

from disco_trl import DiscoTrainer
from disco_trl.preflight import LOCK_FILE, FolderInUse


ROOT = Path(__file__).resolve().parents[1]
SLOW_REWARD = """import time, zlib


def slow(completions, **kwargs):
    time.sleep(1.0)
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(zlib.crc32(t.encode()) % 3 == 0) for t in texts]
"""


def _script(cwd, *args, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd)]))
    cmd = [sys.executable, "-m", "disco_trl.cli", "train", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_trainings_into_one_folder_and_a_killed_runs_lock(tiny_model_dir, math_jsonl, tmp_path):
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD)
    out = tmp_path / "out"
    first = _script(tmp_path, *tiny_run_args(tiny_model_dir, math_jsonl, out, "--reward_funcs", "slow_reward.slow",
                                             "--max_steps", "200", "--seed", "1"), wait=False)
    try:
        deadline = time.time() + 180
        while not (out / LOCK_FILE).exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.5)
        second = _script(tmp_path, *tiny_run_args(tiny_model_dir, math_jsonl, out, "--seed", "2"))
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [line for line in second.stderr.splitlines() if "disco-trl train" in line]
        assert len(lines) == 1 and "is in use by a training run" in lines[0] and f"pid {first.pid}" in lines[0]
        assert first.poll() is None, "the first run is still training"
    finally:
        first.kill()
        first.wait()
    assert (out / LOCK_FILE).exists()  # killed: it could not remove its lock
    third = _script(tmp_path, *tiny_run_args(tiny_model_dir, math_jsonl, out, "--seed", "3"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "taking over the lock" in third.stderr and (out / "model.safetensors").is_file()
    assert not (out / LOCK_FILE).exists()  # released at the end of the run


def test_discotrainer_train_refuses_a_folder_another_process_holds(tmp_path):
    holder = _holding(tmp_path)
    try:
        model, tokenizer = tiny_model_and_tokenizer()
        trainer = DiscoTrainer(model, parity_reward, short_run_config(tmp_path), prompt_dataset(),
                               processing_class=tokenizer)
        with pytest.raises(FolderInUse, match=rf"is in use by a training run \(test holder\).*pid {holder.pid}"):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        holder.kill()
