"""A run stopped after a checkpoint and resumed ends with exactly the parameters of an uninterrupted run (CPU, seed).

The checkpoint falls in the middle of a generation batch (2 updates per generation, stop after update 3), so the
buffered completions, the micro-step counter and the RNG state must all survive it.
"""

import logging
import re
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from disco_testing import parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from test_scripts import run_main, tiny_run_args
from transformers import TrainerCallback

from disco_trl import DiscoTrainer
from disco_trl.checkpoints import CheckpointError, ResumeWarning
from disco_trl.checkpoints.state import apply_changed_settings


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def make_trainer(output_dir, callbacks=(), train_dataset=None, **overrides):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    # short_run_config's run, longer, with a checkpoint every 3 steps
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, seed=5)
    args = short_run_config(output_dir, **{**settings, **overrides})
    return DiscoTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=prompt_dataset() if train_dataset is None else train_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("spg,accumulation,per_device", [(2, 1, 8), (4, 2, 2)])
def test_resume_mid_generation_batch_matches_uninterrupted_run(tmp_path, spg, accumulation, per_device):
    overrides = dict(steps_per_generation=spg, gradient_accumulation_steps=accumulation,
                     per_device_train_batch_size=per_device)
    straight = make_trainer(tmp_path / "straight", save_strategy="no", **overrides)
    straight.train()

    interrupted = make_trainer(tmp_path / "resumed", callbacks=[StopAt(3)], **overrides)
    interrupted.train()
    assert interrupted.state.global_step == 3
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    assert checkpoint.is_dir()

    resumed = make_trainer(tmp_path / "resumed", **overrides)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6

    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    # and the run really moved: the resumed parameters are not those of the checkpoint
    assert any(not torch.equal(p, q) for p, q in zip(interrupted.model.parameters(), resumed.model.parameters()))


# --------------------------------------------------------------------------- settings changed between the runs
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """Three of six steps, a checkpoint at step 3 (short_run_config's run: constant learning rate 5e-3)."""
    out = tmp_path_factory.mktemp("interrupted")
    make_trainer(out, callbacks=[StopAt(3)]).train()
    return out


def _resumed_copy(interrupted_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(interrupted_run, copy)
    return copy


def test_a_new_learning_rate_on_resume_is_applied_and_reported(interrupted_run, tmp_path, caplog):
    run = _resumed_copy(interrupted_run, tmp_path)
    resumed = make_trainer(run, learning_rate=0.5, tau=3.0)
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert "Resumed with changed settings" in caplog.text and "learning_rate 0.005 -> 0.5" in caplog.text
    assert "tau 10.0 -> 3.0" in caplog.text
    logged = [e["learning_rate"] for e in resumed.state.log_history if "learning_rate" in e]
    assert logged[-3:] == [0.5, 0.5, 0.5]  # steps 4-6 (TRL's constant schedule)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [0.5] * len(resumed.optimizer.param_groups)
    assert resumed.lr_scheduler.base_lrs == [0.5] * len(resumed.lr_scheduler.base_lrs)


@pytest.mark.parametrize("name,value,listed", [
    ("score_type", "l_ratio", "score_type: 'log_l' -> 'l_ratio'"),  # its default tau would change too
    ("temperature", 0.6, "temperature: 1.0 -> 0.6"),  # the buffered batch's pi_old log-probs are at 1.0
    ("reward_weights", [2.0], "reward_weights: None -> [2.0]"),  # which completions are positives
    ("seed", 6, "seed: 5 -> 6"),  # the sampler's order mid-epoch: some questions twice, others never
])
def test_a_resume_that_would_change_the_method_is_refused(interrupted_run, tmp_path, name, value, listed):
    run = _resumed_copy(interrupted_run, tmp_path)
    resumed = make_trainer(run, **{name: value})
    with pytest.raises(CheckpointError, match=re.escape(f"cannot change ({listed})")):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 0


def test_another_training_set_on_resume_is_named_from_its_fingerprint(interrupted_run, tmp_path):
    run = _resumed_copy(interrupted_run, tmp_path)
    other = prompt_dataset().map(lambda row: {"prompt": row["prompt"].replace("=", "= ?")})
    resumed = make_trainer(run, train_dataset=other)
    with pytest.warns(ResumeWarning, match=r"on another training set than the one it was trained on \(24 rows, other "
                                           r"prompts\)"):
        resumed.train(resume_from_checkpoint=True)
    # the same training set, rebuilt: no warning
    resumed = make_trainer(_resumed_copy(interrupted_run, tmp_path / "same"), train_dataset=prompt_dataset())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        resumed.train(resume_from_checkpoint=True)


def test_logging_steps_given_on_resume_is_honoured_and_reported(interrupted_run, tmp_path, caplog):
    """Trainer restores logging_steps (and eval_steps, save_steps) from the checkpoint, replacing the value given."""
    run = _resumed_copy(interrupted_run, tmp_path)
    resumed = make_trainer(run, logging_steps=2)
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert "Resumed with changed settings" in caplog.text and "logging_steps 1 -> 2" in caplog.text
    logged = [e["step"] for e in resumed.state.log_history if "disco/objective" in e]
    assert logged == [1, 2, 3, 4, 6]  # every step before the interruption, every second one after


def test_a_learning_rate_resumed_from_zero_becomes_the_new_rate():
    """A run saved at learning_rate 0 has no schedule shape to scale: the optimizer, its initial_lr and the
    scheduler's base_lrs all take the new rate (a rescaling by new / 0 would leave them at 0)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = SimpleNamespace(optimizer=optimizer, lr_scheduler=scheduler, args=SimpleNamespace())
    apply_changed_settings(trainer, {"learning_rate": (0.0, 0.25)})
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.25] and scheduler.base_lrs == [0.25]


def test_the_script_refuses_a_method_change_on_resume_in_one_line(interrupted_run, tmp_path, capsys, tiny_model_dir,
                                                                  math_jsonl):
    run = _resumed_copy(interrupted_run, tmp_path)
    args = tiny_run_args(tiny_model_dir, math_jsonl, run, "--per_device_train_batch_size", "8",
                         "--gradient_accumulation_steps", "1", "--temperature", "1.0",
                         "--resume_from_checkpoint", "last", "--disco_variant", "basic", "--max_steps", "6",
                         "--seed", "5")
    code, _, err = run_main(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "cannot change (disco_variant: 'dro' -> 'basic')" in err
