"""DisCO under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (gloo), with the shipped accelerate configs.

Each ZeRO stage is one `accelerate launch --config_file recipes/accelerate/zero{2,3}.yaml` of tests/ds_worker.py with
only what a CPU needs overridden (CPU_OVERRIDES, named in docs/training.md); the worker trains the cases below one
after the other and saves what each rank saw, and the tests assert on that. Exactness uses plain SGD (Adam would hide
a scale error): the parameters after every optimizer step must equal the parameters before it minus the learning rate
times the from-scratch reference gradient of tests/test_split_invariance.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


pytest.importorskip(
    "deepspeed", reason="DeepSpeed is not installed: `pip install -e '.[deepspeed]'` (scripts/setup_env.sh does)"
)

from disco_testing import REWARDS, tiny_model_and_tokenizer  # noqa: E402
from test_split_invariance import corrected, reference_gradient, sampling_settings  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).parent
# What a CPU needs on top of the shipped accelerate configs (8 GPUs, bf16): 2 processes, no mixed precision, and the
# DeepSpeed CPU accelerator (gloo) with CUDA hidden, so that a GPU machine runs these tests the same way.
CPU_OVERRIDES = ["--num_processes", "2", "--mixed_precision", "no"]
SCRIPT_CPU_OVERRIDES = ["--use_cpu", "true"]  # the training argument; disco_testing.layout_config sets it too
CPU_ENV = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
LR = 0.1

# (per_device_train_batch_size, gradient_accumulation_steps, steps_per_generation) with groups of 4 completions.
LAYOUTS = {
    # whole groups per micro-batch, 2 micro-steps per update
    "whole_groups": dict(layout=[8, 2, 2], score_type="log_l", disco_variant="dro"),
    # groups of 4 over 2 micro-steps; one update per generation, so the look-ahead runs its own no-grad forward
    "split_groups": dict(layout=[2, 4, 4], score_type="log_l", disco_variant="dro"),
    # 2 updates per generation, the second off-policy with a live hinge (seed 0: the second update's sampled-token KL
    # estimate is above delta; it can be negative)
    "updates_per_generation": dict(layout=[4, 2, 4], max_steps=2, score_type="l_ratio", disco_variant="dro",
                                   kl_delta=0.0, seed=0),
    # both: split groups whose second update's look-ahead scores under the updated (partitioned) parameters
    "split_groups_off_policy": dict(layout=[2, 4, 8], max_steps=2, score_type="l_ratio", disco_variant="basic",
                                    kl_delta=0.0, seed=0),
    # the same with sampler log-probs that are not pi_old's (vLLM's role) and the sampling correction, which drops
    # about 40% of the completions (test_split_invariance.corrected)
    "corrected_split_groups_off_policy": dict(layout=[2, 4, 8], max_steps=2, score_type="log_l", disco_variant="dro",
                                              kl_delta=0.0, seed=0, **corrected("sequence_mask")),
    # fill_informative_questions: extra generation rounds (ZeRO-3 gathers the parameters for each) until each process
    # holds its 2 questions with signal; 2 updates per generation, the second off-policy
    "filled": dict(layout=[4, 2, 4], max_steps=2, score_type="log_l", disco_variant="dro", kl_delta=0.0,
                   fill_informative_questions=True, reward="half_informative", num_prompts=200),
}
# ZeRO-2 keeps full parameters, so the combined case (look-ahead on partitioned parameters) is ZeRO-3's alone
ZERO2_LAYOUTS = ["whole_groups", "split_groups", "updates_per_generation"]  # (filling: under ZeRO-3)
ZERO2_CASES = [dict(name=n, kind="layout", learning_rate=LR, **LAYOUTS[n]) for n in ZERO2_LAYOUTS]
ZERO2_CASES.append(dict(name="geometry", kind="geometry"))
ZERO3_CASES = [dict(name=n, kind="layout", learning_rate=LR, save_model=n == "whole_groups", **c)
               for n, c in LAYOUTS.items()]
ZERO3_CASES += [
    dict(name="lora", kind="lora", layout=[8, 2, 2], learning_rate=LR),
    # AdamW here: resuming must restore DeepSpeed's partitioned optimizer state too
    dict(name="resume", kind="resume", layout=[4, 2, 4], max_steps=3, stop_at=1, optim="adamw_torch",
         learning_rate=1e-2),
]
LAUNCH_SECONDS: dict[str, float] = {}


def accelerate_command(config: str, *args: str) -> list[str]:
    """`accelerate launch` of a shipped config with the CPU overrides, then `args` (more launch flags, the script)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [accelerate, "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / config), *CPU_OVERRIDES,
            *args]


def launch_env() -> dict[str, str]:
    return dict(os.environ, **CPU_ENV, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(ROOT)]))


def accelerate_launch(config: str, args: list[str], out: Path) -> subprocess.CompletedProcess:
    cmd = accelerate_command(config, "--main_process_port", "0", *args)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=launch_env(), cwd=out, capture_output=True, text=True, timeout=500)
    LAUNCH_SECONDS[config + " " + Path(args[0]).name] = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return proc


def run_worker(tmp_path_factory, config: str, cases: list[dict]) -> dict:
    out = tmp_path_factory.mktemp(config.split(".")[0])
    (out / "cases.json").write_text(json.dumps(cases))
    accelerate_launch(config, [str(TESTS_DIR / "ds_worker.py"), str(out), str(out / "cases.json")], out)
    records = {c["name"]: [torch.load(out / f"{c['name']}.rank{r}.pt", weights_only=False) for r in (0, 1)]
               for c in cases}
    records["_dir"] = out
    return records


@pytest.fixture(scope="module")
def zero2(tmp_path_factory):
    return run_worker(tmp_path_factory, "zero2.yaml", ZERO2_CASES)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    return run_worker(tmp_path_factory, "zero3.yaml", ZERO3_CASES)


def assert_update_is_reference(before, after, grad, lr):
    """after - before == -lr * grad, to float32 precision: per tensor, within 1e-4 of its largest update plus two
    float32 ulps of its largest entry (a parameter cannot be stored more exactly); a wrong scale is off by ~100%."""
    assert set(grad) <= set(before) and grad
    largest = max(float(g.abs().max()) for g in grad.values()) * lr
    assert largest > 0, "the reference update is zero: the test data carry no signal"
    for name, g in grad.items():
        update = after[name].double() - before[name].double()
        err = float((update + lr * g).abs().max())
        ulp = torch.finfo(torch.float32).eps * float(before[name].abs().max())
        allowed = 1e-4 * lr * float(g.abs().max()) + 2 * ulp
        assert err <= allowed, f"{name}: update off by {err:.3e} (allowed {allowed:.3e}, largest update {largest:.3e})"


def check_exact(records, case):
    layout, kwargs = case["layout"], {k: case[k] for k in ("score_type", "kl_delta") if k in case}
    rank0 = records[0]
    steps = case.get("max_steps", 1)
    assert len(rank0["params"]) == steps
    for step in range(steps):
        sampling = sampling_settings(case["vllm_importance_sampling_mode"]) if "sampling_spread" in case else None
        grad, n_questions = reference_gradient(records, step, accumulation=layout[1], variant=case["disco_variant"],
                                               delta=kwargs.get("kl_delta", 1e-4), score_type=kwargs["score_type"],
                                               sampling=sampling, reward=REWARDS[case.get("reward", "parity")])
        assert n_questions == layout[0] * layout[1] * 2 // 4
        after = rank0["params"][step + 1] if step + 1 < steps else rank0["final"]
        assert_update_is_reference(rank0["params"][step], after, grad, LR)
    # the ranks agree, and DeepSpeed's own accounting is the training arguments' (it would otherwise step elsewhere)
    assert all(torch.equal(records[1]["final"][n], t) for n, t in rank0["final"].items())
    assert rank0["engine"] == "DeepSpeedEngine" and rank0["client_optimizer"] == "SGD"
    assert rank0["engine_gradient_accumulation_steps"] == layout[1]
    assert rank0["engine_micro_batch"] == layout[0]
    assert rank0["engine_global_steps"] == steps
    if case.get("kl_delta") == 0.0:
        hinge = [h["disco/hinge_active"] for h in rank0["log_history"] if "disco/hinge_active" in h]
        assert hinge[0] == 0.0 and hinge[-1] > 0.0  # on-policy first, the hinge is live in the second update


@pytest.mark.slow
@pytest.mark.parametrize("name", ZERO2_LAYOUTS)
def test_zero2_updates_equal_the_reference(zero2, name):
    assert zero2[name][0]["zero_stage"] == 2
    check_exact(zero2[name], next(c for c in ZERO2_CASES if c["name"] == name))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_zero3_updates_equal_the_reference(zero3, name):
    assert zero3[name][0]["zero_stage"] == 3
    check_exact(zero3[name], next(c for c in ZERO3_CASES if c["name"] == name))


@pytest.mark.slow
def test_zero3_fills_each_process_share_over_extra_rounds(zero3):
    """Both processes ran the same extra generation rounds (each one gathering the ZeRO-3 partitions) and filled
    their shares; the two updates themselves are checked against the reference above."""
    logged = [[h["disco/fill/rounds"] for h in r["log_history"] if "disco/fill/rounds" in h] for r in zero3["filled"]]
    assert logged[0] == logged[1] and max(logged[0]) > 1
    # per process, its informative questions found in each round of the batch (its share: 4 questions): enough in
    # all rounds, not before the last on some process (the rounds stop when every share is full)
    found = [[sum(r["signal"]) for r in record["rounds"] if r["step"] == 0] for record in zero3["filled"]]
    assert all(len(f) == logged[0][0] and sum(f) >= 4 for f in found)
    assert any(sum(f[:-1]) < 4 for f in found)
    logs = zero3["filled"][0]["log_history"]
    assert [h["disco/fill/out_of_rounds"] for h in logs if "disco/fill/rounds" in h] == [0.0]


@pytest.mark.slow
def test_zero3_lora_trains_only_the_adapter_and_the_saved_adapter_loads(zero3):
    from peft import PeftModel

    record = zero3["lora"][0]
    assert record["zero_stage"] == 3
    assert record["trainable"] and all("lora_" in n for n in record["trainable"])
    changed = {n for n in record["initial"] if not torch.equal(record["initial"][n], record["final"][n])}
    assert changed and changed <= set(record["trainable"])
    assert any("lora_B" in n for n in changed)  # lora_B starts at zero: the adapter learned something
    base, _ = tiny_model_and_tokenizer(dtype=torch.float32)
    loaded = dict(PeftModel.from_pretrained(base, zero3["_dir"] / "lora" / "adapter").named_parameters())
    for name in record["trainable"]:
        torch.testing.assert_close(loaded[name], record["final"][name], rtol=0, atol=0, msg=name)


def check_resume(records):
    """Each rank of the resume case: the run resumed from checkpoint-1 ends bit-for-bit where the uninterrupted run
    ends, from a checkpoint in DeepSpeed's format plus DisCO's per-rank state."""
    for record in records:
        assert record["steps"] == (3, 1, 3)
        # DeepSpeed's checkpoint format (partitioned model and optimizer states) plus DisCO's per-rank state
        files = record["checkpoint_files"]
        assert any(f.startswith("global_step1/") and "optim_states" in f for f in files), files
        assert {"disco_state_rank0.pt", "disco_state_rank1.pt"} <= set(files)
        for name, value in record["straight"].items():
            torch.testing.assert_close(record["resumed"][name], value, rtol=0, atol=0, msg=name)
        assert any(not torch.equal(record["at_checkpoint"][n], record["resumed"][n]) for n in record["resumed"])


@pytest.mark.slow
def test_zero3_resume_mid_generation_matches_uninterrupted_run(zero3):
    check_resume(zero3["resume"])


@pytest.mark.slow
def test_a_deepspeed_checkpoint_is_complete_only_with_every_file_its_resume_reads(zero3, tmp_path):
    """The resume case's checkpoint in DeepSpeed's layout (`latest`, global_step1/ with each rank's optimizer state)
    is complete for its 2 processes; without a rank's optimizer state, without `latest`, with a model state cut short
    or without a process's RNG state it is not, and each reason is named."""
    from disco_trl.checkpoints import incomplete_reasons

    checkpoint = zero3["_dir"] / "resume" / "resumed" / "checkpoint-1"
    assert incomplete_reasons(str(checkpoint), world_size=2) == []
    damages = {
        "holds the optimizer states of 1 processes, this run has 2":
            lambda c: next((c / "global_step1").glob("*rank_1*optim_states.pt")).unlink(),
        "no DeepSpeed `latest` file": lambda c: (c / "latest").unlink(),
        "model_states.pt is damaged (truncated or corrupt)":
            lambda c: [p.write_bytes(p.read_bytes()[:-64]) for p in (c / "global_step1").glob("*model_states.pt")],
        "no rng_state_1.pth": lambda c: (c / "rng_state_1.pth").unlink(),
    }
    for reason, damage in damages.items():
        copy = tmp_path / reason[:12].replace(" ", "_") / "checkpoint-1"
        shutil.copytree(checkpoint, copy)
        damage(copy)
        assert any(reason in r for r in incomplete_reasons(str(copy), world_size=2)), reason


@pytest.mark.slow
def test_zero3_saved_model_loads_without_deepspeed(zero3):
    """zero3_save_16bit_model: save_model writes a consolidated model (here fp32, as trained with mixed_precision no;
    bf16 runs write bf16) that plain transformers loads."""
    from transformers import AutoModelForCausalLM

    saved = zero3["_dir"] / "whole_groups" / "saved_model"
    model = AutoModelForCausalLM.from_pretrained(saved)
    trained = zero3["whole_groups"][0]["final"]
    loaded = dict(model.named_parameters())
    assert set(loaded) == set(trained)
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_deepspeed_batching_that_contradicts_the_training_arguments_is_refused(zero2):
    record = zero2["geometry"][0]
    assert record["json_agreeing"] is None
    assert "gives gradient_accumulation_steps=1 (accelerate sets 1 when the DeepSpeed config dict passed as " \
           "`deepspeed` does not name it), but the training arguments give gradient_accumulation_steps=2" \
           in record["json_without_accumulation"]
    assert 'Set "gradient_accumulation_steps": "auto"' in record["json_without_accumulation"]
    assert "train_micro_batch_size_per_gpu=8, but the training arguments give per_device_train_batch_size=4" \
           in record["json_micro_batch"]
    assert "or set per_device_train_batch_size=8 in the training arguments" in record["json_micro_batch"]
    assert "train_batch_size=32, but the training arguments give per_device_train_batch_size x " \
           "gradient_accumulation_steps x processes=16 (4 x 2 x 2)" in record["json_train_batch"]
    # an accelerate config's deepspeed_config with gradient_accumulation_steps: 4, through the training script
    status, line = record["script_accumulation"]
    assert status == 2
    assert line.startswith("disco-trl train: error: DeepSpeed batch geometry: the accelerate config's "
                           "deepspeed_config"), line
    assert "gradient_accumulation_steps=4, but the training arguments give gradient_accumulation_steps=2" in line
    assert "Remove gradient_accumulation_steps from the accelerate config's deepspeed_config" in line
    # on CPU without use_cpu, accelerate counts 1 process of the 2 (DeepSpeed would then stop on its own batch check)
    status, line = record["script_without_use_cpu"]
    assert status == 2
    assert line.startswith("disco-trl train: error: DeepSpeed runs 2 processes, but the training arguments count "
                           "world_size=1"), line
    assert "On CPU, set use_cpu=True (--use_cpu true)" in line


@pytest.mark.slow
def test_training_script_under_zero3_at_a_scaled_down_paper_geometry(tiny_model_dir, math_jsonl, tmp_path):
    """4 sequences per micro-batch, groups of 8 spanning two micro-steps, 4 updates per generation (the paper's 7B/8B
    layout on 8 GPUs: 4 x 8 accumulation, here 4 x 2 on 2 processes)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = [
        str(ROOT / "examples" / "train_disco.py"),
        "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(math_jsonl), "--output_dir", str(out),
        "--num_generations", "8", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--generation_batch_size", "64", "--expected_questions_per_generation", "8",
        "--expected_questions_per_update", "2", "--max_completion_length", "8", "--max_steps", "4",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--dtype", "float32", "--seed", "0",
        "--learning_rate", "1e-3", *SCRIPT_CPU_OVERRIDES,
        "--reward_funcs", "boxed_math_reward", "test_scripts.hash_reward",
    ]
    proc = accelerate_launch("zero3.yaml", args, tmp_path)
    assert ("8 questions x 8 completions per generation; 2 questions per optimizer update (2 processes x 4 sequences "
            "per micro-batch x 2 accumulation steps); 4 updates per generation") in proc.stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "disco/objective" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    # updates 2-4 reuse the generation: measured against the policy that sampled it (a token-mean estimate, any sign)
    kls = [h["disco/kl"] for h in logged]
    assert kls[0] == 0.0 and all(kl != 0.0 for kl in kls[1:]), kls
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()  # the consolidated ZeRO-3 model, no DeepSpeed
    assert set(after) == set(before) and any(not torch.equal(before[k], after[k]) for k in before)


def test_cpu_overrides_are_the_ones_the_docs_name():
    docs = (ROOT / "docs" / "training.md").read_text()
    flags = CPU_OVERRIDES + SCRIPT_CPU_OVERRIDES
    for word in [" ".join(flags[i:i + 2]) for i in range(0, len(flags), 2)]:
        assert f"`{word}`" in docs or word in docs, word
    for key, value in CPU_ENV.items():
        assert f"{key}={value}" in docs, key


def teardown_module(module):
    if LAUNCH_SECONDS:
        print("\nDeepSpeed launches (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in LAUNCH_SECONDS.items()))
