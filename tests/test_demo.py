"""The CPU demo: generated task, warm start, the shipped start (fingerprint, damage, rebuild and compare), held-out
Pass@1, `disco-trl demo --quick`, `disco-trl compare`."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import pytest
import torch
from disco_testing import tiny_start, tiny_start_config

from disco_trl.demo import shipped, task
from disco_trl.demo import warmstart as ws
from disco_trl.rewards import boxed_math_reward


# --------------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize(
    "numbers, ops, answer, steps",
    [
        ([7, 3, 4, 9], ["+", "*", "-"], 10, ("3*4=12", "7+12=19", "19-9=10")),
        ([2, 3, 4], ["*", "*"], 24, ("2*3=6", "6*4=24")),
        ([1, 5, 2], ["-", "+"], -2, ("1-5=-4", "-4+2=-2")),
        ([9, 2, 3, 4, 5], ["-", "*", "+", "*"], 23, ("2*3=6", "4*5=20", "9-6=3", "3+20=23")),
    ],
)
def test_solve_uses_precedence_one_step_per_operation(numbers, ops, answer, steps):
    got, got_steps, _ = task.solve(numbers, ops)
    assert got == answer
    assert got_steps == steps
    expression = "".join(f"{n}{o}" for n, o in zip(numbers, ops)) + str(numbers[-1])
    assert eval(expression) == answer  # Python's precedence agrees


def test_problems_are_graded_bounded_deterministic_and_disjoint():
    problems = task.make_problems(200, seed=3)
    assert [p.num_ops for p in problems[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert len({p.expression for p in problems}) == 200
    for p in problems:
        assert eval(p.expression) == p.answer
        assert all(abs(int(s.split("=")[1])) <= 99 for s in p.steps)
        assert p.solution_text.endswith(f"\\boxed{{{p.answer}}}")
        assert "\\boxed{}" in p.prompt_text
    assert [p.expression for p in task.make_problems(20, seed=3)] == [p.expression for p in problems[:20]]
    assert [p.expression for p in task.make_problems(20, seed=4)] != [p.expression for p in problems[:20]]
    exclude = {p.expression for p in problems}
    assert not exclude & {p.expression for p in task.make_problems(300, seed=5, exclude=exclude, distinct=False)}
    with pytest.raises(ValueError, match="num_ops"):
        task.make_problem(random.Random(0), 5)
    with pytest.raises(RuntimeError, match="distinct"):
        task.make_problems(300, seed=0, difficulties=(1,))  # only 243 one-operation questions exist


def _step_is_right(line: str) -> bool:
    lhs, rhs = line.split("=")
    return eval(lhs) == int(rhs)


def test_the_slipping_teacher_slips_at_its_rate_and_the_slip_propagates():
    problems = task.make_problems(400, seed=2, distinct=False)
    rng = random.Random(0)
    assert all(task.slipped_solution(p, rng, 0.0) == p.solution_text for p in problems)

    always = [task.slipped_solution(p, rng, 1.0).split("\n") for p in problems[:50]]
    assert all(not _step_is_right(line) for lines in always for line in lines[:-1])

    lines = [task.slipped_solution(p, rng, 0.15).split("\n") for p in problems]
    steps = [line for sol in lines for line in sol[:-1]]
    slipped = sum(not _step_is_right(line) for line in steps)
    assert 0.11 < slipped / len(steps) < 0.19
    for p, sol in zip(problems, lines):
        final = int(sol[-1][len("\\boxed{"):-1])
        assert final == int(sol[-2].split("=")[1])  # the boxed answer is the (possibly slipped) last result
        if all(_step_is_right(line) for line in sol[:-1]):
            assert final == p.answer
    with pytest.raises(ValueError, match="slip_rate"):
        task.slipped_solution(problems[0], rng, 1.5)
    with pytest.raises(ValueError, match="slip_rate"):
        ws.WarmStartConfig(slip_rate=1.0).validate()


def test_held_out_splits_are_disjoint_from_each_other_and_from_training():
    test, val = ws.eval_problems(100, "test"), ws.eval_problems(100, "val")
    train = ws.train_problems(3000, seed=7)
    test_x, val_x, train_x = ({p.expression for p in s} for s in (test, val, train))
    assert len(test_x) == len(val_x) == 100
    assert not test_x & val_x and not test_x & train_x and not val_x & train_x
    assert sorted(p.num_ops for p in test) == sorted([1, 2, 3, 4] * 25)
    with pytest.raises(ValueError, match="held-out"):
        ws.eval_problems(101)
    with pytest.raises(ValueError, match="split"):
        ws.eval_problems(10, "train")


def test_rl_rows_are_graded_by_the_project_reward():
    problems = task.make_problems(12, seed=1)
    rows = task.to_rl_rows(problems)
    right = [[{"role": "assistant", "content": p.solution_text}] for p in problems]
    wrong = [[{"role": "assistant", "content": p.solution_text.replace(f"{{{p.answer}}}", f"{{{p.answer + 1}}}")}]
             for p in problems]
    solutions = [r["solution"] for r in rows]
    assert boxed_math_reward(right, solution=solutions) == [1.0] * 12
    assert boxed_math_reward(wrong, solution=solutions) == [0.0] * 12
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["num_ops"] == problems[0].num_ops


# --------------------------------------------------------------------------------------------------- warm start
def test_tokenizer_keeps_digits_apart_and_round_trips():
    problems = task.make_problems(50, seed=0)
    tok = ws.build_task_tokenizer(task.corpus(problems))
    text = problems[0].solution_text
    assert tok.decode(tok(text)["input_ids"]) == text
    pieces = [tok.decode([i]) for i in tok("47+38=85")["input_ids"]]
    assert pieces == ["4", "7", "+", "3", "8", "=", "8", "5"]
    assert tok.padding_side == "left" and tok.eos_token == tok.pad_token == "<|endoftext|>"


def test_supervised_warm_start_lowers_the_loss():
    torch.manual_seed(0)
    cfg = ws.WarmStartConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64, sft_steps=30, sft_batch_size=16, sft_warmup_steps=3,
                             sft_learning_rate=1e-2)
    model, tok, info = ws.build_warm_started(cfg, log=None)
    assert info["sft_final_loss"] < 0.6 * 5.7  # the untrained model's loss is about log(vocab) = 5.7
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters"]


def test_a_start_folder_reloads_bit_for_bit_and_its_fingerprint_is_its_content(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, build = ws.build_warm_started(tiny_start_config(), log=None)
    record = shipped.write_start(model, tok, build, tmp_path / "a")
    assert shipped.verify(tmp_path / "a") == record and record["build"]["config"]["hidden_size"] == 32
    assert set(record["files"]) >= {"model.safetensors", "tokenizer.json", "config.json"}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(tmp_path / "a")("12+3")["input_ids"] == tok("12+3")["input_ids"]
    # The same content on another path has the same key; another model has another.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert shipped.model_key(tmp_path / "b") == shipped.model_key(tmp_path / "a") == f"start-{record['fingerprint']}"
    assert shipped.fingerprint(tiny_start(tmp_path / "c", seed=1)) != record["fingerprint"]
    with pytest.raises(ValueError, match="hidden_size"):
        ws.WarmStartConfig(hidden_size=30, num_attention_heads=4).validate()


def test_the_shipped_start_is_verified_and_loads():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, record = shipped.shipped_start()
    assert shipped.fingerprint(path) == record["fingerprint"]
    assert sum((shipped.SHIPPED_DIR / name).stat().st_size for name in record["files"]) < 5_000_000
    assert record["build"]["config"] == dataclasses.asdict(ws.WarmStartConfig())  # built with the default settings
    assert record["environment"]["libraries"]["torch"] and record["start_eval"]["questions"] == 100
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == record["build"]["num_parameters"]
    assert len(AutoTokenizer.from_pretrained(path)) == record["build"]["vocab_size"]


def _damaged_copy(tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(shipped.SHIPPED_DIR, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (damaged / "model.safetensors").write_bytes(bytes(data))
    return damaged


def test_a_damaged_start_is_refused_loudly_before_any_work(tmp_path, monkeypatch, capsys):
    from disco_trl.cli import main as cli_main

    damaged = _damaged_copy(tmp_path)
    with pytest.raises(shipped.DamagedStart, match="model.safetensors does not match its recorded sha256"):
        shipped.verify(damaged)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", damaged)  # as if the installed package's file were damaged
    for argv in (["demo"], ["compare"], ["study", "--quick"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*argv, "--output-dir", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "is damaged: model.safetensors does not match" in err and "disco-trl demo --rebuild-start" in err
    (damaged / "tokenizer.json").unlink()
    with pytest.raises(SystemExit):
        cli_main(["demo", "--start-model", str(damaged), "--check-start"])
    assert "--start-model: the start model in" in capsys.readouterr().err


def test_rebuild_and_compare_matches_on_the_same_machine_and_measures_a_difference(tmp_path, capsys):
    from disco_trl.demo.experiment import RunSettings
    from disco_trl.demo.rebuild import rebuild_and_compare

    settings = RunSettings(eval_questions=4, eval_samples=2, max_completion_length=8)
    reference = tiny_start(tmp_path / "reference")
    same = rebuild_and_compare(tiny_start_config(), str(tmp_path / "out" / "rebuilt"), reference, settings,
                               log=print)
    assert same["match"] and same["tokenizer"] == "identical file" and same["weights"] is None
    assert "[rebuild] MATCH" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "rebuild_report.json").read_text())["match"] is True
    assert shipped.verify(tmp_path / "out" / "rebuilt")["start_eval"]["num_samples"] == 2

    other = tiny_start(tmp_path / "other", seed=1)  # another SFT: the comparison says how far
    far = rebuild_and_compare(tiny_start_config(), str(tmp_path / "again"), other, settings, log=print)
    printed = capsys.readouterr().out
    assert not far["match"] and far["weights"]["max_abs"] > 0 and "[rebuild] DIFFERENT" in printed
    assert far["sft_final_loss"]["rebuilt"] == same["sft_final_loss"]["rebuilt"] != far["sft_final_loss"]["reference"]
    assert "largest |difference|" in printed and "SFT loss (rebuilt / reference)" in printed


def test_the_rebuild_flag_builds_beside_the_output_and_compares(tmp_path, monkeypatch, capsys):
    from disco_trl.cli import main as cli_main
    from disco_trl.demo import run

    monkeypatch.setattr(run, "WarmStartConfig", tiny_start_config)  # the default recipe takes minutes
    reference = tiny_start(tmp_path / "reference")
    argv = ["demo", "--rebuild-start", "--start-model", reference, "--output-dir", str(tmp_path / "out"),
            "--eval-questions", "4", "--eval-samples", "1"]
    assert cli_main(argv) == 0
    assert "[rebuild] MATCH" in capsys.readouterr().out
    assert shipped.fingerprint(tmp_path / "out" / "rebuilt-start") == shipped.fingerprint(reference)


def test_check_start_measures_the_start_beside_its_record(tmp_path, capsys):
    from disco_trl.cli import main as cli_main

    start = tiny_start(tmp_path / "start")
    argv = ["demo", "--check-start", "--start-model", start, "--eval-questions", "4", "--eval-samples", "2"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert f"fingerprint {shipped.fingerprint(start)}" in out and "held-out Pass@1 measured now: " in out
    assert "4 test questions x 2 samples, T=0.6, sampling seed 1" in out


def test_pass_at_1_is_the_mean_over_questions_of_the_correct_fraction(tmp_path):
    from disco_trl.demo.evaluate import evaluate_pass_at_1

    model, tok, _ = ws.build_warm_started(tiny_start_config(), log=None)
    problems = ws.eval_problems(4)
    calls = []

    def first_two_samples_of_question_0(completions, solution, **kwargs):
        calls.append(len(completions))
        # 3 samples per question: question 0 gets 2 right of 3, the others none.
        return [1.0 if i in (0, 1) else 0.0 for i in range(len(completions))]

    result = evaluate_pass_at_1(model, tok, problems, first_two_samples_of_question_0, num_samples=3,
                                temperature=1.0, max_new_tokens=8, seed=0)
    assert calls == [12]
    assert result["pass@1"] == pytest.approx((2 / 3) / 4)
    assert result["pass@1_by_ops"][1] == pytest.approx(2 / 3) and result["pass@1_by_ops"][4] == 0.0
    assert result["num_questions"] == 4 and result["num_samples"] == 3


# --------------------------------------------------------------------------------------------------- the CLIs
def test_demo_quick_measures_accuracy_and_writes_the_plot(tmp_path, capsys):
    from disco_trl.cli import main as cli_main

    out = tmp_path / "out"
    assert cli_main(["demo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out Pass@1" in printed and "training reward" in printed
    assert f"start: the shipped model (fingerprint {shipped.shipped_start()[1]['fingerprint']}" in printed
    assert "[warm-start]" not in printed  # no supervised warm start runs

    result = json.loads((out / "demo_results.json").read_text())
    assert 0.0 <= result["pass@1_before"] <= 1.0 and 0.0 <= result["pass@1_after"] <= 1.0
    assert result["before"]["num_questions"] == 16 and result["before"]["num_samples"] == 2
    assert result["before"]["boxed_rate"] > 0.5  # the warm start taught the answer format
    steps = [e["step"] for e in result["log_history"] if "entropy" in e]
    assert steps == list(range(1, 9))  # every optimizer step logged
    assert sum("reward" in e for e in result["log_history"]) == 2  # one generation batch per 4 updates
    kls = [e["disco/kl"] for e in result["log_history"] if "disco/kl" in e]
    assert kls[0] == 0.0 and any(k != 0.0 for k in kls[1:])  # old policy = current only on the first update

    png = out / "training_dynamics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out / "run" / "final_model" / "config.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "ten"], "--steps must be a whole number"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--learning-rate=-1e-4"], "--learning-rate must be a finite number > 0"),
        (["--method", "ppo"], "invalid choice: 'ppo'"),
        (["--eval-questions", "500"], "at most 100 held-out questions"),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
    ],
)
def test_demo_rejects_bad_values_before_any_work(argv, message, capsys, tmp_path):
    from disco_trl.demo.run import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "disco,ppo"], "unknown method 'ppo'"),
        (["--seeds", "0,0"], "lists a value twice"),
        (["--seeds", "a"], "--seeds"),
        (["--lr-sweep", "1e-4,0"], "learning rates must be finite numbers > 0"),
        (["--lr-sweep", "1e-4", "--learning-rate", "1e-4"], "not allowed with argument"),
    ],
)
def test_compare_rejects_bad_values(argv, message, capsys):
    from disco_trl.demo.compare import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_quick_writes_table_json_plot_and_resumes(tmp_path, capsys):
    from disco_trl.demo.compare import main

    argv = ["--quick", "--methods", "disco,dapo", "--seeds", "0", "--lr-sweep", "1e-4,1e-3", "--steps", "2",
            "--eval-questions", "8", "--eval-samples", "1", "--output-dir", str(tmp_path / "cmp")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(results["summary"]) == {"disco", "dapo"}
    for method, summary in results["summary"].items():
        assert 0.0 <= summary["pass@1_after"]["mean"] <= 1.0 and summary["final_entropy"] is not None
        sweep = results["sweep"][method]
        assert set(sweep) == {"0.0001", "0.001"}
        best = max(sweep.items(), key=lambda kv: (kv[1], -float(kv[0])))[0]
        assert summary["learning_rate"] == float(best)  # the reported runs use the sweep's best rate
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| DisCO (log-L) |" in table and "| DAPO |" in table and "Learning-rate sweep" in table
    assert (tmp_path / "cmp" / "dynamics.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "cmp" / "runs").glob("*.json"))) == 6
    capsys.readouterr()

    assert main(argv) == 0  # everything is reused: no training the second time
    assert capsys.readouterr().out.count("reusing the finished run") == 6

    # Another comparison sharing the runs folder: a new output folder, the same runs reused.
    shared = [*argv[:-2], "--output-dir", str(tmp_path / "cmp2"), "--runs-dir", str(tmp_path / "cmp" / "runs")]
    assert main(shared) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 6
    assert "| DisCO (log-L) |" in (tmp_path / "cmp2" / "results.md").read_text()
    assert not (tmp_path / "cmp2" / "runs").exists()


# --------------------------------------------------------------------------------------------------- the methods
def test_one_registry_each_name_one_method(tmp_path):
    """The demo, compare, study and the benchmarks build their trainers from disco_trl.demo.methods: a name means
    the same config everywhere (and the benchmarks' baseline is not the demo's GRPO)."""
    from trl import GRPOConfig

    from disco_trl import DiscoConfig, DiscoTrainer
    from disco_trl.demo.experiment import RunSettings, build_args
    from disco_trl.demo.methods import (
        BENCHMARK_METHODS,
        DEMO_METHODS,
        FILL_METHODS,
        METHODS,
        build_config,
        trainer_class,
    )

    expected = {
        "disco": (DiscoConfig, {"score_type": "log_l", "disco_variant": "dro"}),
        "disco-lratio": (DiscoConfig, {"score_type": "l_ratio", "disco_variant": "dro"}),
        "disco-b": (DiscoConfig, {"score_type": "log_l", "disco_variant": "basic"}),
        "disco-skip": (DiscoConfig, {"score_type": "log_l", "skip_uninformative_questions": True}),
        "disco-fill": (DiscoConfig, {"score_type": "log_l", "fill_informative_questions": True,
                                     "max_generation_rounds": 10}),
        "grpo": (GRPOConfig, {"loss_type": "grpo", "beta": 0.001}),
        "dr_grpo": (GRPOConfig, {"loss_type": "dr_grpo", "beta": 0.0, "scale_rewards": "none"}),
        "dapo": (GRPOConfig, {"loss_type": "dapo", "beta": 0.0, "epsilon_high": 0.28}),
        "trl-default": (GRPOConfig, {"loss_type": "dapo", "beta": 0.0, "epsilon_high": None}),  # no clip-higher
        "trl-default-ref-kl": (GRPOConfig, {"loss_type": "dapo", "beta": 0.04}),
        "grpo-beta0": (GRPOConfig, {"loss_type": "grpo", "beta": 0.0}),
    }
    assert set(METHODS) == set(expected)
    assert set(DEMO_METHODS) | set(BENCHMARK_METHODS) | set(FILL_METHODS) == set(METHODS)
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=10)
    for name, (config_class, fields) in expected.items():
        config = build_config(name, common)
        assert type(config) is config_class, name
        assert {k: getattr(config, k) for k in fields} == fields, name
        assert (trainer_class(name) is DiscoTrainer) == (config_class is DiscoConfig)
    assert build_config("trl-default-ref-kl", common, beta=0.1).beta == 0.1  # the benchmarks' --ref-beta
    # The demo's run settings reach the config on top of the method's fields.
    args = build_args(RunSettings(method="disco-lratio", kl_delta=0.5, learning_rate=3e-5), str(tmp_path))
    assert (args.score_type, args.kl_delta, args.learning_rate) == ("l_ratio", 0.5, 3e-5)
    assert build_args(RunSettings(method="grpo"), str(tmp_path)).beta == 0.001
