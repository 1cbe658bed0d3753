"""A run stopped after a checkpoint and resumed ends with exactly the parameters of an uninterrupted run (CPU, seed).

The checkpoint falls in the middle of a generation batch (2 updates per generation, stop after update 3), so the
buffered completions, the micro-step counter and the RNG state must all survive it.
"""

import pytest
import torch
from disco_testing import parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from transformers import TrainerCallback

from disco_trl import DiscoTrainer


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def make_trainer(output_dir, callbacks=(), **overrides):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    # short_run_config's run, longer, with a checkpoint every 3 steps
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, seed=5)
    args = short_run_config(output_dir, **{**settings, **overrides})
    return DiscoTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=args,
        train_dataset=prompt_dataset(),
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
