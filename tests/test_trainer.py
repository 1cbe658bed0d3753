"""End to end: DiscoTrainer.train() with real sampling on a tiny local Qwen2 model, and every refusal by its
message."""

import pytest
import torch
from disco_testing import parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from trl import GRPOConfig

from disco_trl import DiscoConfig, DiscoTrainer


DISCO_METRICS = [
    "disco/objective",
    "disco/kl",
    "disco/kl_penalty",
    "disco/hinge_active",
    "disco/frac_mixed_questions",
    "disco/positives_per_question",
    "disco/negatives_per_question",
    "entropy",
    "reward",
]


def train(tmp_path, dataset=None, **overrides):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DiscoTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=short_run_config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else prompt_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer, before


def merged_logs(trainer):
    logs = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            logs.setdefault(key, []).append(value)
    return logs


@pytest.mark.parametrize("score_type", ["log_l", "l_ratio"])
@pytest.mark.parametrize("variant", ["dro", "basic"])
def test_train_runs_changes_parameters_and_logs_disco_metrics(tmp_path, score_type, variant):
    trainer, before = train(tmp_path, score_type=score_type, disco_variant=variant)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no parameter moved"
    logs = merged_logs(trainer)
    for key in DISCO_METRICS:
        assert key in logs, f"metric {key} not logged"
        assert all(v is None or v == v for v in logs[key]), f"NaN in {key}"
    assert trainer.args.tau == {"log_l": 10.0, "l_ratio": 1.0}[score_type]
    # the loss TRL logs is minus the objective plus the penalty
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(-first["disco/objective"] + first["disco/kl_penalty"], abs=1e-5)


def test_lora_adapter_trains(tmp_path):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = DiscoTrainer(
        model=model,
        reward_funcs=parity_reward,
        args=short_run_config(tmp_path),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        peft_config=lora,
    )
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert lora_before
    changed = [not torch.equal(p.detach(), lora_before[n]) for n, p in trainer.model.named_parameters()
               if n in lora_before]
    assert any(changed)
    base = [p for n, p in trainer.model.named_parameters() if "lora" not in n]
    assert all(not p.requires_grad for p in base)
    assert "disco/objective" in merged_logs(trainer)


def test_conversational_prompts(tmp_path):
    trainer, before = train(tmp_path, dataset=prompt_dataset(conversational=True))
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())
    assert "disco/objective" in merged_logs(trainer)


def test_model_card_names_disco_and_cites_the_paper(tmp_path):
    trainer, _ = train(tmp_path, max_steps=1)
    trainer.create_model_card(model_name="tiny-disco")
    card = (tmp_path / "README.md").read_text()
    assert "DisCO" in card and "2505.12366" in card and "li2025disco" in card
    assert "disco" in trainer._tag_names


# ----------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(beta=0.04), "kl_beta"),
        (dict(score_type="logl"), "score_type"),
        (dict(disco_variant="auc"), "disco_variant"),
        (dict(tau=0.0), "tau must be > 0"),
        (dict(tau=-2.0), "tau must be > 0"),
        (dict(kl_delta=-1e-4), "kl_delta"),
        (dict(kl_beta=-1.0), "kl_beta"),
        (dict(num_generations=1), "at least 2 completions"),
        (dict(per_device_train_batch_size=6, num_generations=4),
         r"per_device_train_batch_size=6 x gradient_accumulation_steps=1 = 6 completions.*whole groups of "
         r"num_generations=4.*gradient_accumulation_steps=2"),
        (dict(per_device_train_batch_size=2, num_generations=4, gradient_accumulation_steps=4, steps_per_generation=2),
         r"steps_per_generation=2 must then be a multiple of gradient_accumulation_steps=4"),
        (dict(entropy_coef=0.01), "entropy_coef"),
        (dict(top_entropy_quantile=0.2), "top_entropy_quantile"),
    ],
)
def test_config_refusals(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        short_run_config(tmp_path, **overrides)


def test_groups_may_span_micro_steps_of_one_optimizer_step(tmp_path):
    args = short_run_config(tmp_path, per_device_train_batch_size=2, num_generations=4, gradient_accumulation_steps=2,
                  steps_per_generation=4)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 4


def test_tau_defaults_follow_the_score_type(tmp_path):
    assert short_run_config(tmp_path).tau == 10.0
    assert short_run_config(tmp_path, score_type="l_ratio").tau == 1.0
    assert short_run_config(tmp_path, score_type="l_ratio", tau=3.0).tau == 3.0


def test_paper_defaults(tmp_path):
    args = DiscoConfig(output_dir=str(tmp_path), report_to="none")
    assert (args.temperature, args.lr_scheduler_type, args.learning_rate) == (0.6, "constant", 2e-6)
    assert (args.num_generations, args.kl_delta, args.kl_beta, args.beta) == (8, 1e-4, 1e3, 0.0)
    assert (args.score_type, args.disco_variant) == ("log_l", "dro")


def test_trainer_refuses_a_grpo_config(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    grpo_args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                           report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="DiscoTrainer needs a DiscoConfig"):
        DiscoTrainer(model=model, reward_funcs=parity_reward, args=grpo_args, train_dataset=prompt_dataset(),
                     processing_class=tokenizer)


def test_missing_reward_column_is_refused_before_training(tmp_path):
    def needs_solution(completions, solution, **kwargs):
        return [0.0] * len(completions)

    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    dataset = prompt_dataset().rename_column("solution", "answer")
    with pytest.raises(ValueError, match=r"`needs_solution` needs the dataset column\(s\) \['solution'\].*'answer'"):
        DiscoTrainer(model=model, reward_funcs=[needs_solution], args=short_run_config(tmp_path),
                     train_dataset=dataset, processing_class=tokenizer)


def reward_of_completions_only(completions):
    return [0.0] * len(completions)


def reward_reading_prompt(prompt, completions, **kwargs):  # TRL passes the prompts as `prompts`
    return [0.0] * len(completions)


async def async_reward_without_kwargs(completions, prompts, completion_ids, trainer_state, log_extra, log_metric):
    return [0.0] * len(completions)  # every keyword TRL passes but the dataset's `solution` column


@pytest.mark.parametrize("reward, message", [
    (reward_of_completions_only,
     r"`reward_of_completions_only` does not accept the keyword argument\(s\) \['prompts', 'completion_ids', "
     r"'trainer_state', 'log_extra', 'log_metric', 'solution'\].*\*\*kwargs"),
    (reward_reading_prompt,
     r"`reward_reading_prompt` needs the dataset column\(s\) \['prompt'\].*passes the prompts as `prompts`"),
    (async_reward_without_kwargs,
     r"`async_reward_without_kwargs` does not accept the keyword argument\(s\) \['solution'\]"),
])
def test_a_reward_that_cannot_take_trls_keywords_is_refused_before_training(tmp_path, reward, message):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        DiscoTrainer(model=model, reward_funcs=[reward], args=short_run_config(tmp_path),
                     train_dataset=prompt_dataset(), processing_class=tokenizer)


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path):
    """A local stand-in for a Hub model whose config needs remote code: config.json's auto_map points at a
    configuration_*.py in the folder, which transformers runs only with trust_remote_code."""
    import json
    import shutil

    path = tmp_path / "remote-code-model"
    shutil.copytree(tiny_model_dir, path)
    (path / "configuration_stand_in.py").write_text(
        "from transformers import Qwen2Config\n\n\n"
        "class StandInConfig(Qwen2Config):\n    model_type = 'disco_stand_in'\n"
    )
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="disco_stand_in", auto_map={"AutoConfig": "configuration_stand_in.StandInConfig"})
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_one_helper_reads_a_remote_code_config_as_trl_loads_the_model(remote_code_model, tmp_path):
    """trust_remote_code from the arguments (or model_init_kwargs, which win, as when TRL loads the model) reaches the
    one place DisCO reads a model's config: the trainer's LoRA check, the vLLM checks and the script's checks."""
    from trl import ModelConfig

    from disco_trl.preflight import model_config
    from disco_trl.scripts.checks import ScriptError, check_model
    from disco_trl.trainer import _model_or_config
    from disco_trl.vllm_support import _model_config

    path = str(remote_code_model)
    untrusted = short_run_config(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        model_config(path, untrusted)
    for args in (short_run_config(tmp_path, trust_remote_code=True),
                 short_run_config(tmp_path, model_init_kwargs={"trust_remote_code": True})):
        for read in (model_config, _model_or_config, _model_config):
            assert type(read(path, args)).__name__ == "StandInConfig", read
        assert type(check_model(ModelConfig(model_name_or_path=path), args)).__name__ == "StandInConfig"
    with pytest.raises(ScriptError, match="could not be resolved from its config.json.*trust_remote_code"):
        check_model(ModelConfig(model_name_or_path=path), untrusted)
    # model_init_kwargs win over the argument, as in TRL's own model loading
    with pytest.raises(ValueError, match="trust_remote_code"):
        model_config(path, short_run_config(tmp_path, trust_remote_code=True,
                                            model_init_kwargs={"trust_remote_code": False}))


@pytest.mark.parametrize("variant, tau, low, high", [("dro", 1e6, 0.999, 1.0), ("dro", 0.05, 0.0, 0.999),
                                                     ("basic", 0.05, 0.999999, 1.000001)])
def test_the_dro_weights_of_the_negatives_are_logged(tmp_path, variant, tau, low, high):
    """A huge tau weighs the negatives alike (DisCO-b's effective sample size: all of them); a small one does not;
    DisCO-b's own weights are equal whatever tau."""
    trainer, _ = train(tmp_path, tau=tau, max_steps=1, disco_variant=variant)
    logs = merged_logs(trainer)
    assert all(low <= v <= high for v in logs["disco/neg_weight_ess"]), logs["disco/neg_weight_ess"]
    assert all(0.0 < v <= 1.0 for v in logs["disco/neg_weight_max"])
