"""The training script (`disco-trl train` / examples/train_disco.py), its recipes, accelerate configs and GPU smoke
script.

Everything runs on CPU: recipes are parsed (not run), the end-to-end test trains a tiny local model for two updates,
and every fail-early check is exercised by its message.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from disco_trl.geometry import BatchGeometry
from disco_trl.scripts import train as train_script
from disco_trl.scripts.train import ScriptError, check_batch_geometry, make_parser


ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
PAPER_RECIPES = sorted((ROOT / "recipes" / "paper").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
# A GPU recipe asks for bf16 (or fp16); this CPU-only machine cannot, so the tests override only that.
CPU_OVERRIDES = ["--bf16", "false", "--fp16", "false"]


def parse(args: list[str]):
    return make_parser().parse_args_and_config(args=args)


def parse_recipe(path: Path, tmp_path: Path, *extra: str):
    return parse(["--config", str(path), *CPU_OVERRIDES, "--output_dir", str(tmp_path / "out"), *extra])


def documented_launch(recipe: Path) -> tuple[Path | None, int]:
    """The launch command written in a recipe's header: (accelerate config or None, number of training processes)."""
    header = "".join(line[1:] for line in recipe.read_text().splitlines(keepends=True) if line.startswith("#"))
    header = header.replace("\\\n", " ")
    commands = [shlex.split(line) for line in header.splitlines() if "examples/train_disco.py" in line]
    assert commands, f"{recipe.name}: the header documents no launch command"
    words = commands[0]
    assert words[words.index("--config") + 1] == str(recipe.relative_to(ROOT)), (
        f"{recipe.name}: its documented launch command points at another recipe"
    )
    if "accelerate" not in words:
        return None, 1
    config = ROOT / words[words.index("--config_file") + 1]
    if "--num_processes" in words:
        return config, int(words[words.index("--num_processes") + 1])
    return config, int(yaml.safe_load(config.read_text())["num_processes"])


# --------------------------------------------------------------------------------------------------------- packaging
def test_example_script_is_the_installed_module():
    example = ROOT / "examples" / "train_disco.py"
    assert example.is_symlink(), "examples/train_disco.py must stay a symlink to the one real script"
    assert example.resolve() == Path(train_script.__file__).resolve()


def test_cli_dispatches_train_to_the_script(capsys):
    from disco_trl import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--expected_questions_per_update", "--score_type", "--lora_r", "--use_vllm"):
        assert option in out


def test_vllm_extra_matches_what_the_pinned_trl_accepts():
    """setup.cfg's [vllm] extra installs exactly the vLLM range of the installed TRL's own [vllm] extra."""
    import configparser
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    trl_vllm = {
        Requirement(r.split(";")[0]).name: str(Requirement(r.split(";")[0]).specifier)
        for r in requires("trl") if 'extra == "vllm"' in r
    }
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    ours = [Requirement(line) for line in cfg["options.extras_require"]["vllm"].strip().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    ours = {r.name: str(r.specifier) for r in ours}
    assert ours["vllm"] == trl_vllm["vllm"] == "<=0.31.0,>=0.22.0"
    assert ours == trl_vllm


# ----------------------------------------------------------------------------------------------------------- recipes
def test_the_six_paper_runs_have_a_recipe():
    names = {p.stem for p in PAPER_RECIPES}
    assert names == {f"{m}_{s}" for m in ("qwen1.5b", "qwen7b", "llama8b") for s in ("logl", "lratio")}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_matches_its_documented_launch(recipe, tmp_path):
    script_args, args, model_args = parse_recipe(recipe, tmp_path)
    assert model_args.model_name_or_path
    accelerate_config, num_processes = documented_launch(recipe)
    if accelerate_config is not None:
        assert accelerate_config.is_file(), f"{recipe.name} names a missing accelerate config {accelerate_config}"
    # Every recipe states its geometry, and the documented launch realises it.
    assert script_args.expected_questions_per_generation and script_args.expected_questions_per_update
    geometry = check_batch_geometry(script_args, args, num_processes)
    assert geometry.updates_per_generation.denominator == 1
    # Whole groups per process and optimizer step (DiscoConfig checks it; a group may span micro-steps).
    assert (args.per_device_train_batch_size * args.gradient_accumulation_steps) % args.num_generations == 0
    raw = yaml.safe_load(recipe.read_text())
    assert raw.get("bf16") or raw.get("fp16"), "a GPU recipe should train in mixed precision"


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: p.stem)
def test_paper_recipe_has_the_papers_settings(recipe, tmp_path):
    script_args, args, model_args = parse_recipe(recipe, tmp_path)
    model_key, score_key = recipe.stem.split("_")
    hub_ids = {
        "qwen1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "qwen7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "llama8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    }
    assert model_args.model_name_or_path == hub_ids[model_key]
    assert script_args.dataset_name == "deepscaler"
    assert script_args.reward_funcs == ["boxed_math_reward"]
    # Objective: DisCO (DRO) with the paper's tau per scoring function, delta 1e-4, beta 1e3.
    assert args.score_type == {"logl": "log_l", "lratio": "l_ratio"}[score_key]
    assert args.disco_variant == "dro"
    assert args.tau == {"logl": 10.0, "lratio": 1.0}[score_key]
    assert (args.kl_delta, args.kl_beta, args.beta) == (1e-4, 1e3, 0.0)
    # Batch geometry on the documented 8-GPU launch: 128 questions x 8 per generation, 32 questions per update.
    _, num_processes = documented_launch(recipe)
    assert num_processes == 8
    geometry = BatchGeometry.from_args(args, num_processes)
    assert args.num_generations == 8
    assert geometry.questions_per_generation == 128 and geometry.questions_per_update == 32
    assert geometry.updates_per_generation == 4 and args.num_iterations == 1
    # 4 sequences of up to 9,216 tokens per GPU micro-batch: the authors' ppo_max_token_len_per_gpu=36864.
    assert args.per_device_train_batch_size * (1024 + args.max_completion_length) == 36864
    # Sampling and optimisation.
    assert args.max_completion_length == 8192 and args.temperature == 0.6 and args.top_p == 1.0
    assert args.learning_rate == (2e-6 if model_key == "qwen1.5b" else 1e-6)
    assert args.lr_scheduler_type == "constant" and args.weight_decay == 0.0
    assert args.max_steps == 4 * (1400 if model_key == "qwen1.5b" else 1000)  # paper steps x 4 updates
    assert args.use_vllm and args.vllm_mode == "colocate"
    # fp32 master weights (bf16 weights would round lr 1e-6 updates away), bf16 compute.
    assert model_args.dtype == "float32" and yaml.safe_load(recipe.read_text())["bf16"] is True
    accelerate_config, _ = documented_launch(recipe)
    expected_stage = 2 if model_key == "qwen1.5b" else 3  # 8B models on ZeRO-3
    assert yaml.safe_load(accelerate_config.read_text())["deepspeed_config"]["zero_stage"] == expected_stage


def test_vllm_server_recipe_uses_the_server(tmp_path):
    recipe = ROOT / "recipes" / "vllm" / "qwen7b_logl_server.yaml"
    _, args, _ = parse_recipe(recipe, tmp_path)
    assert args.use_vllm and args.vllm_mode == "server"
    text = recipe.read_text()
    # The documented server command carries TRL 1.16's weight-transfer settings.
    flags = ("VLLM_SERVER_DEV_MODE=1 vllm serve", "--weight-transfer-config", "--logprobs-mode processed_logprobs")
    for flag in flags:
        assert flag in text


def test_lora_recipe_uses_peft(tmp_path):
    _, args, model_args = parse_recipe(ROOT / "recipes" / "lora" / "qwen2.5-0.5b-instruct_math_t4.yaml", tmp_path)
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    assert peft_config is not None and peft_config.r == 16
    assert not args.use_vllm


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import ClusterConfig

    cluster = ClusterConfig.from_yaml_file(str(config))
    expected = {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED",
                "zero3_multinode": "DEEPSPEED"}[config.stem]
    assert str(cluster.distributed_type).split(".")[-1] == expected
    if config.stem.startswith("zero3"):
        ds = cluster.deepspeed_config
        assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True
    if config.stem == "zero3_multinode":  # the same DeepSpeed settings over 2 machines of 8 processes
        single = ClusterConfig.from_yaml_file(str(config.with_name("zero3.yaml")))
        assert cluster.deepspeed_config == single.deepspeed_config
        assert (cluster.num_machines, cluster.num_processes, cluster.main_process_port) == (2, 16, 29500)
        assert cluster.rdzv_backend == "static" and cluster.same_network is True
        assert cluster.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


# --------------------------------------------------------------------------------------------------- batch geometry
def test_geometry_check_names_the_accumulation_that_fits_the_launch(tmp_path):
    script_args, args, _ = parse_recipe(ROOT / "recipes" / "paper" / "qwen7b_logl.yaml", tmp_path)
    check_batch_geometry(script_args, args, 8)
    with pytest.raises(ScriptError, match=r"updates on 64 questions.*gradient_accumulation_steps=4"):
        check_batch_geometry(script_args, args, 16)
    with pytest.raises(ScriptError, match=r"set gradient_accumulation_steps=16"):
        check_batch_geometry(script_args, args, 4)
    with pytest.raises(ScriptError, match=r"No gradient_accumulation_steps gives 256 completions with 3 processes"):
        check_batch_geometry(script_args, args, 3)


def test_geometry_check_on_questions_per_generation(tmp_path):
    script_args, args, _ = parse_recipe(
        ROOT / "recipes" / "paper" / "qwen1.5b_logl.yaml", tmp_path, "--generation_batch_size", "512"
    )
    with pytest.raises(ScriptError, match=r"expected_questions_per_generation=128.*generation_batch_size=1024"):
        check_batch_geometry(script_args, args, 8)


# ------------------------------------------------------------------------------------------------ GPU smoke script
SMOKE = ROOT / "scripts" / "gpu_smoke.sh"


def test_gpu_smoke_fails_clearly_without_cuda(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver; the no-GPU path is what this test checks")
    result = subprocess.run(
        ["bash", str(SMOKE)], capture_output=True, text=True, env={**os.environ, "SMOKE_OUT": str(tmp_path)}
    )
    assert result.returncode == 1
    assert "needs a machine with an NVIDIA GPU" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be started or written before the GPU check"


def test_gpu_smoke_commands_parse(tmp_path):
    """The flags the smoke script passes are real options, and its geometry is consistent."""
    result = subprocess.run(
        ["bash", str(SMOKE)], capture_output=True, text=True, check=True,
        env={**os.environ, "SMOKE_DRY_RUN": "1", "SMOKE_OUT": str(tmp_path)},
    )
    runs = [chunk.strip().splitlines() for chunk in result.stdout.split("# run: ")[1:]]
    assert [r[0] for r in runs] == ["colocate", "zero3"]
    for run in runs:
        words = run[1:]
        cut = words.index("examples/train_disco.py")
        launch, script_args = words[:cut], words[cut + 1 :]
        config = ROOT / launch[launch.index("--config_file") + 1]
        assert config.is_file()
        s_args, args, _ = parse([*script_args, *CPU_OVERRIDES])
        check_batch_geometry(s_args, args, int(launch[launch.index("--num_processes") + 1]))
        assert args.use_vllm and args.vllm_mode == "colocate"
    assert "zero3.yaml" in " ".join(runs[1])


# ------------------------------------------------------------------------------------ running the script end to end
def tiny_run_args(model_dir, dataset, output_dir, *extra):
    return [
        "--model_name_or_path", str(model_dir),
        "--dataset_name", str(dataset),
        "--output_dir", str(output_dir),
        "--num_generations", "4",
        "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "2",
        "--generation_batch_size", "16",  # 4 questions per generation, 2 per update: 2 updates per generation
        "--expected_questions_per_generation", "4",
        "--expected_questions_per_update", "2",
        "--max_completion_length", "8",
        "--max_steps", "2",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--report_to", "none",
        "--dtype", "float32",
        "--seed", "0",
        *extra,
    ]


def run_main(args, capsys):
    code = train_script.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def infinite_reward(completions, **kwargs):
    """+inf for the first completion of every call, 0 otherwise: a reward DisCO must refuse, not train on."""
    return [math.inf if i == 0 else 0.0 for i in range(len(completions))]


def hash_reward(completions, **kwargs):
    """1.0 for about a third of completions, a fixed function of the text: a random tiny model never writes a correct
    \\boxed{} answer, so this makes mixed groups (positives and negatives) and hence a DisCO gradient."""
    import zlib

    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(zlib.crc32(t.encode()) % 3 == 0) for t in texts]


def test_script_trains_a_tiny_local_model_end_to_end(tiny_model_dir, math_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    rewards = ["--reward_funcs", "boxed_math_reward", f"{__name__}.hash_reward"]
    code, stdout, stderr = run_main(tiny_run_args(tiny_model_dir, math_jsonl, out, *rewards), capsys)
    assert code == 0, stderr
    assert "4 questions x 4 completions per generation; 2 questions per optimizer update" in stdout
    # The trained model is saved where users (and `disco-trl eval`) look for it, with its tokenizer.
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "disco/objective" in h]
    assert [h["step"] for h in logged] == [1, 2]
    for key in ("reward", "entropy", "disco/kl", "disco/kl_penalty", "disco/frac_mixed_questions", "step_time",
                "rewards/boxed_math_reward/mean", "rewards/hash_reward/mean"):
        assert key in logged[0], key
    assert logged[0]["disco/frac_mixed_questions"] > 0
    # The second update of the generation is measured against the policy that generated the samples.
    assert logged[0]["disco/kl"] == 0.0 and logged[1]["disco/kl"] > 0.0
    # The weights moved.
    import torch
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_script_trains_with_lora_flags_and_groups_split_over_micro_steps(tiny_model_dir, math_jsonl, tmp_path, capsys):
    out = tmp_path / "lora"
    # 2 sequences per micro-batch: each group of 4 spans 2 micro-steps (the layout of the 7B/8B recipes).
    args = tiny_run_args(tiny_model_dir, math_jsonl, out, "--max_steps", "1", "--use_peft", "true",
                         "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
                         "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "4")
    code, stdout, stderr = run_main(args, capsys)
    assert code == 0, stderr
    expected = "2 questions per optimizer update (1 process x 2 sequences per micro-batch x 4 accumulation steps)"
    assert expected in stdout
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}


# --------------------------------------------------------------------------------- fail early, clearly, by message
def test_missing_model_directory_is_refused_before_anything_loads(math_jsonl, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "model"
    code, _, err = run_main(tiny_run_args(missing, math_jsonl, tmp_path / "out"), capsys)
    assert code == 2
    assert f"model_name_or_path='{missing}' does not exist" in err


def test_directory_without_a_saved_model_is_refused(math_jsonl, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, _, err = run_main(tiny_run_args(empty, math_jsonl, tmp_path / "out"), capsys)
    assert code == 2 and "is a directory without config.json" in err


def test_dataset_without_an_answer_column_is_refused(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "no_answers.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Compute {i} + 1.", "notes": "x"}) + "\n" for i in range(8)))
    code, _, err = run_main(tiny_run_args(tiny_model_dir, data, tmp_path / "out"), capsys)
    assert code == 2
    assert "could not load the training set" in err and "no answer field" in err and "--answer_field" in err


def test_dataset_with_other_field_names_loads_with_the_named_fields(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "renamed.jsonl"
    data.write_text("".join(json.dumps({"q": f"Compute {i} + 1.", "gold": str(i + 1)}) + "\n" for i in range(8)))
    args = tiny_run_args(tiny_model_dir, data, tmp_path / "out", "--question_field", "q", "--answer_field", "gold")
    script_args, training_args, model_args = parse(args)
    _, rewards, dataset = train_script.prepare(script_args, training_args, model_args)
    assert dataset["solution"][:2] == ["1", "2"] and "Compute 0 + 1." in dataset["problem"][0]


def reward_needing_difficulty(completions, difficulty, **kwargs):  # a custom reward reading a dataset column
    return [float(d) for d in difficulty]


def test_column_a_custom_reward_needs_must_be_in_the_dataset(tiny_model_dir, math_jsonl, tmp_path, capsys):
    reward = f"{__name__}.reward_needing_difficulty"
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--reward_funcs", reward)
    code, _, err = run_main(args, capsys)
    assert code == 2
    assert "needs the dataset column(s) ['difficulty']" in err and "--keep_columns" in err
    # Carrying the column over fixes it.
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--reward_funcs", reward,
                         "--keep_columns", "difficulty")
    _, rewards, dataset = train_script.prepare(*parse(args))
    assert rewards == [reward_needing_difficulty] and "difficulty" in dataset.column_names


def test_unknown_reward_name_is_refused(tiny_model_dir, math_jsonl, tmp_path, capsys):
    code, _, err = run_main(tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--reward_funcs", "acc"), capsys)
    assert code == 2 and "reward function 'acc' is unknown" in err


def test_batch_that_cannot_hold_whole_groups_is_reported_by_the_script(tiny_model_dir, math_jsonl, tmp_path, capsys):
    # 6 completions per process and optimizer step cannot be cut into whole groups of 4.
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--per_device_train_batch_size", "6",
                         "--gradient_accumulation_steps", "1", "--generation_batch_size", "24")
    code, _, err = run_main(args, capsys)
    assert code == 2
    assert err.startswith("disco-trl train: error: ")
    assert "per_device_train_batch_size=6" in err and "cannot hold whole groups of num_generations=4" in err
    assert "Traceback" not in err


def test_recipe_geometry_mismatch_is_reported_with_the_fix(tiny_model_dir, math_jsonl, tmp_path, capsys):
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--gradient_accumulation_steps", "1",
                         "--generation_batch_size", "16")
    code, _, err = run_main(args, capsys)
    assert code == 2 and "set gradient_accumulation_steps=2" in err


def test_vllm_requested_but_not_installed_is_refused(tiny_model_dir, math_jsonl, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    code, _, err = run_main(tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "o", "--use_vllm", "true"), capsys)
    assert code == 2
    assert "vLLM is not installed" in err and "pip install 'disco-trl[vllm]'" in err and "0.31.0" in err


def test_example_script_runs_standalone_and_reports_errors(math_jsonl, tmp_path):
    """`python examples/train_disco.py` (the symlink) runs as a plain script and exits 2 with the message."""
    missing = tmp_path / "missing-model"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_disco.py"),
         *tiny_run_args(missing, math_jsonl, tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(r"train_disco\.py: error: model_name_or_path='.*missing-model' does not exist", result.stderr)


def test_resume_last_continues_from_the_newest_checkpoint(tiny_model_dir, math_jsonl, tmp_path, capsys):
    out = tmp_path / "resumable"
    first = tiny_run_args(tiny_model_dir, math_jsonl, out, "--save_strategy", "steps", "--save_steps", "1")
    code, _, err = run_main(first, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # Same command, longer, told to resume: it starts from checkpoint-2 (not from scratch) and goes on to step 3.
    code, _, err = run_main(first + ["--max_steps", "3", "--resume_from_checkpoint", "last"], capsys)
    assert code == 0, err
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "disco/objective" in h] == [1, 2, 3]


def test_resume_without_a_checkpoint_is_refused(tiny_model_dir, math_jsonl, tmp_path, capsys):
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "fresh", "--resume_from_checkpoint", "last")
    code, _, err = run_main(args, capsys)
    assert code == 2 and "there is no checkpoint-N folder in output_dir" in err
    args = tiny_run_args(tiny_model_dir, math_jsonl, tmp_path / "fresh", "--resume_from_checkpoint", str(tmp_path))
    code, _, err = run_main(args, capsys)
    assert code == 2 and "is not a checkpoint (no trainer_state.json there)" in err


def test_files_named_in_the_training_docs_exist():
    text = (ROOT / "docs" / "training.md").read_text()
    named = set(re.findall(r"(?<![\w/])(?:recipes|notebooks|scripts|examples)/[\w./-]+\.(?:yaml|ipynb|sh|py)", text))
    named = {p for p in named if not Path(p).stem.isupper()}  # placeholders such as recipes/accelerate/CONFIG.yaml
    assert len(named) >= 10
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/training.md names files that do not exist: {missing}"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_finished_run_requeued_with_resume_last_exits_0_and_touches_nothing(tiny_model_dir, math_jsonl, tmp_path,
                                                                                capsys):
    """recipes/slurm requeues a job with --resume_from_checkpoint last: a run that already finished must not train a
    step past max_steps and overwrite its final model (with save_total_limit 1, the only copy)."""
    out = tmp_path / "finished"
    command = tiny_run_args(tiny_model_dir, math_jsonl, out, "--save_strategy", "steps", "--save_steps", "1",
                            "--save_total_limit", "1", "--reward_funcs", f"{__name__}.hash_reward")
    code, _, err = run_main(command, capsys)
    assert code == 0, err
    before = _snapshot(out)
    for resume in ("last", str(out / "checkpoint-2")):
        code, stdout, err = run_main(command + ["--resume_from_checkpoint", resume], capsys)
        assert code == 0, err
        assert stdout.count("\n") == 1 and stdout.startswith("disco-trl train: already finished at step 2 (")
        assert "max_steps=2" in stdout and err == ""
        assert _snapshot(out) == before  # nothing written, nothing deleted
    # the final model alone says so too (its checkpoints gone)
    shutil.rmtree(out / "checkpoint-2")
    code, stdout, _ = run_main(command + ["--resume_from_checkpoint", "last"], capsys)
    assert code == 0 and "already finished at step 2" in stdout


def test_a_non_finite_loss_stops_the_script_before_anything_is_saved(tiny_model_dir, math_jsonl, tmp_path, capsys):
    """learning_rate 1e30: the first update sends the weights to ~1e30, the second micro-batch's loss is NaN. The run
    stops there with one line (exit 1), and neither a checkpoint nor the final model is written from then on."""
    out = tmp_path / "nan"
    command = tiny_run_args(tiny_model_dir, math_jsonl, out, "--learning_rate", "1e30", "--save_strategy", "steps",
                            "--save_steps", "1", "--reward_funcs", f"{__name__}.hash_reward")
    code, _, err = run_main(command, capsys)
    assert code == 1
    *_, last = re.split(r"[\r\n]", err.rstrip("\n"))
    assert last.startswith("disco-trl train: error: Training stopped at step 2: the loss is not finite"), err
    assert "the last checkpoint, checkpoint-1, is intact" in last and "Traceback" not in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "model.safetensors").exists() and not (out / "trainer_state.json").exists()
