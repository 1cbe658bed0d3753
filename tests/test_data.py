"""Tests for disco_trl.data.load_math_dataset: the shared benchmark files, local files in several formats and field
layouts, the known training sources (their Hub layout, served from memory), and the error messages."""

from __future__ import annotations

import hashlib
import json

import pytest

from disco_trl import data
from disco_trl.data import (
    BENCHMARKS,
    PROMPT_TEMPLATE,
    benchmark_dir,
    format_prompt,
    load_math_dataset,
    normalize_answer,
    sources,
)


SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


def test_prompt_template_is_the_papers():
    assert PROMPT_TEMPLATE == "{problem}" + SUFFIX
    assert format_prompt("What is 1+1?", conversational=False) == "What is 1+1?" + SUFFIX
    assert format_prompt("What is 1+1?") == [{"role": "user", "content": "What is 1+1?" + SUFFIX}]
    with_system = format_prompt("Q", system_prompt="Be brief.")
    assert with_system == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q" + SUFFIX}]


@pytest.mark.parametrize("problem", [
    "What is 1+1?" + SUFFIX,
    "What is 1+1?" + SUFFIX.rstrip("."),  # without the final full stop
    "What is 1+1?\n\nlet's think step by step and output the final answer within \\boxed{}.  ",  # other spacing, case
])
def test_a_problem_that_already_ends_with_the_instruction_does_not_get_it_twice(problem, tmp_path):
    assert format_prompt(problem, conversational=False) == problem.strip()
    data_file = tmp_path / "with_instruction.jsonl"
    data_file.write_text(json.dumps({"problem": problem, "answer": "2"}) + "\n")
    (row,) = load_math_dataset(str(data_file))
    assert row["prompt"][-1]["content"].lower().count("let's think step by step") == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (27.0, "27"),
        ("3159.0", "3159"),
        (0.5, "0.5"),
        (12, "12"),
        (["$\\frac{1}{2}$"], "\\frac{1}{2}"),
        (["$x=2$", "$y=3$"], "x=2, y=3"),
        ("69$,$84", "69,84"),
        ("\\$18.90", "\\$18.90"),  # an escaped dollar is a currency sign, kept
        ("  ", None),
        (None, None),
        (float("nan"), None),
        ([], None),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.needs_benchmarks
@pytest.mark.parametrize(
    ("name", "rows", "first_solution"),
    [
        ("aime24", 30, None),
        ("aime25", 30, "70"),
        ("amc23", 40, None),
        ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("minerva", 272, None),
        ("olympiadbench", 675, None),
    ],
)
def test_shared_benchmarks_load_with_their_own_field_names(name, rows, first_solution):
    ds = load_math_dataset(name)
    assert len(ds) == rows
    assert set(ds.column_names) == {"prompt", "solution", "problem"}
    for row in ds.select(range(5)):
        assert row["solution"] and isinstance(row["solution"], str)
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert message["content"] == row["problem"] + SUFFIX
    if first_solution is not None:
        assert ds[0]["solution"] == first_solution
    plain = load_math_dataset(name, conversational=False, limit=3)
    assert len(plain) == 3 and plain[0]["prompt"] == ds[0]["problem"] + SUFFIX


@pytest.mark.needs_benchmarks
def test_benchmark_answers_come_from_the_right_fields():
    folder = benchmark_dir()
    raw = {n: [json.loads(line) for line in open(folder / f, encoding="utf-8")]
           for n, f in data.BENCHMARK_FILES.items()}
    amc = load_math_dataset("amc23")
    assert [r["answer"] for r in raw["amc23"]][:3] == [float(s) for s in amc["solution"][:3]]  # 27.0 -> "27"
    assert all("." not in s for s in amc["solution"])
    minerva = load_math_dataset("minerva")
    assert "answer" not in raw["minerva"][0]
    assert minerva[0]["solution"] in raw["minerva"][0]["solution"]  # the last \boxed{} of the worked solution
    olympiad = load_math_dataset("olympiadbench")
    assert olympiad[0]["problem"] == raw["olympiadbench"][0]["question"]
    assert all("$" not in s.replace("\\$", "") for s in olympiad["solution"])
    aime = load_math_dataset("aime24")
    assert aime["solution"] == [str(r["answer"]) for r in raw["aime24"]]


@pytest.mark.needs_benchmarks
def test_aliases_and_limit():
    assert load_math_dataset("MATH-500", limit=4)["solution"] == load_math_dataset("math500")["solution"][:4]
    assert len(load_math_dataset("minerva_math", limit=2)) == 2


def test_benchmark_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "Find 2+2.", "answer": "4"}) + "\n")
    monkeypatch.setenv("DISCO_BENCHMARK_DIR", str(tmp_path))
    assert benchmark_dir() == tmp_path
    ds = load_math_dataset("aime24", local=True)
    assert ds["solution"] == ["4"] and ds["problem"] == ["Find 2+2."]
    with pytest.raises(FileNotFoundError, match="DISCO_BENCHMARK_DIR"):
        load_math_dataset("aime25", local=True)


# ---------------------------------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------------------------------

ROWS = [
    {"question": "What is $3 \\cdot 4$?", "final": "12", "other": 1},
    {"question": "Simplify $\\frac{2}{4}$.", "final": "\\frac{1}{2}", "other": 2},
]


def _write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_local_files_with_explicit_fields(tmp_path, fmt):
    path = tmp_path / f"mine.{fmt}"
    _write(path, ROWS, fmt)
    ds = load_math_dataset(str(path), question_field="question", answer_field="final", keep_columns=["other"])
    assert ds["solution"] == ["12", "\\frac{1}{2}"]
    assert ds["problem"] == [r["question"] for r in ROWS]
    assert [int(x) for x in ds["other"]] == [1, 2]


def test_local_file_field_detection(tmp_path):
    path = tmp_path / "deepscaler_like.jsonl"
    rows = [{"problem": "P1", "answer": "1", "solution": "long text \\boxed{1}"}, {"problem": "P2", "answer": 2}]
    _write(path, rows, "jsonl")
    ds = load_math_dataset(str(path))
    assert ds["problem"] == ["P1", "P2"] and ds["solution"] == ["1", "2"]
    # open-r1/DAPO-Math-17k-Processed style: the problem under `prompt`, the bare answer under `solution`
    processed = tmp_path / "processed.parquet"
    rows = [{"prompt": "Find $x$.", "solution": "4", "data_source": "x"}, {"prompt": "Q2", "solution": "-1"}]
    _write(processed, rows, "parquet")
    ds = load_math_dataset(str(processed), conversational=False)
    assert ds["problem"] == ["Find $x$.", "Q2"] and ds["solution"] == ["4", "-1"]


def test_local_file_answer_from_worked_solution(tmp_path):
    path = tmp_path / "math_like.jsonl"
    rows = [
        {"problem": "P1", "solution": "We get $\\boxed{\\frac{3}{4}}$."},
        {"problem": "P2", "solution": "So \\boxed{1} and finally \\boxed{2}."},
        {"problem": "P3", "solution": "No boxed answer at all."},
    ]
    _write(path, rows, "jsonl")
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        ds = load_math_dataset(str(path))
    assert ds["solution"] == ["\\frac{3}{4}", "2"]


def test_missing_fields_fail_with_a_clear_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write(path, [{"text": "What is 1+1?", "label_x": "2"}], "jsonl")
    with pytest.raises(ValueError, match=r"no question field.*columns: \['label_x', 'text'\].*question_field="):
        load_math_dataset(str(path))
    with pytest.raises(ValueError, match=r"no answer field.*answer_field=.*solution_field="):
        load_math_dataset(str(path), question_field="text")
    with pytest.raises(ValueError, match="answer field 'nope' is not in the data"):
        load_math_dataset(str(path), question_field="text", answer_field="nope")
    ds = load_math_dataset(str(path), question_field="text", answer_field="label_x")
    assert ds["solution"] == ["2"]


def test_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffproblem,answer\nWhat is 2+2?,4\n".encode("utf-8"))
    ds = load_math_dataset(str(path))
    assert ds["problem"] == ["What is 2+2?"] and ds["solution"] == ["4"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"problem": "P", "answer": "1"}) + "\n").encode("utf-8"))
    assert load_math_dataset(str(jsonl))["solution"] == ["1"]


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", "[]"),
                                               ("header.csv", "problem,answer\n")])
def test_empty_file_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"^load_math_dataset: {path} is empty \(no rows\)") as info:
        load_math_dataset(str(path))
    assert "\n" not in str(info.value)


def test_unknown_source_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="neither a known source"):
        load_math_dataset("not-a-dataset")
    with pytest.raises(FileNotFoundError):
        load_math_dataset(str(tmp_path / "missing.jsonl"))


def test_custom_template_and_system_prompt(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, [{"problem": "1+1?", "answer": "2"}], "jsonl")
    ds = load_math_dataset(str(path), prompt_template="Q: {problem}\nA:", system_prompt="You are a solver.",
                           keep_columns=None)
    assert ds[0]["prompt"] == [
        {"role": "system", "content": "You are a solver."},
        {"role": "user", "content": "Q: 1+1?\nA:"},
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Known training sources: their Hub layouts, served from memory (no network in tests)
# ---------------------------------------------------------------------------------------------------------------------

DAPO_WRAPPED = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    tables = {
        "agentica-org/DeepScaleR-Preview-Dataset": [
            {"problem": "Compute $1+2$.", "answer": "3", "solution": "It is \\boxed{3}."},
            {"problem": "Compute $2 \\cdot 5$.", "answer": "", "solution": "So \\boxed{10}."},  # empty answer
        ],
        "BytedTsinghua-SIA/DAPO-Math-17k": [
            {
                "data_source": "math_dapo",
                "prompt": [{"role": "user", "content": DAPO_WRAPPED.format(problem=p)}],
                "ability": "MATH",
                "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
                "extra_info": {"index": str(i)},
            }
            for i, (p, a) in enumerate([("Find $x$ if $x+1=5$.", "4"), ("Find $y$ if $2y=6$.", "3")] * 3)
        ],
        "DigitalLearningGmbH/MATH-lighteval": [
            {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "level": "Level 1", "type": "Algebra",
             "solution": "Adding, $\\boxed{\\frac{3}{4}}$."},
        ],
    }
    calls = []

    def read_hub(hub_id, split, config):
        calls.append((hub_id, split, config))
        if hub_id not in tables:
            raise RuntimeError(f"no network in tests: {hub_id}")
        return datasets.Dataset.from_list(tables[hub_id])

    monkeypatch.setattr(sources, "read_hub", read_hub)
    return calls


def test_deepscaler_layout(fake_hub):
    ds = load_math_dataset("deepscaler")
    assert fake_hub == [("agentica-org/DeepScaleR-Preview-Dataset", "train", None)]
    # the row with an empty answer falls back to the last \boxed{} of its solution
    assert ds["solution"] == ["3", "10"]
    assert ds[0]["prompt"][0]["content"] == "Compute $1+2$." + SUFFIX


def test_dapo_layout_strips_its_instructions_and_deduplicates(fake_hub):
    ds = load_math_dataset("dapo-math-17k", conversational=False)
    assert ds["problem"] == ["Find $x$ if $x+1=5$.", "Find $y$ if $2y=6$."]
    assert ds["solution"] == ["4", "3"]
    assert ds["prompt"][0] == "Find $x$ if $x+1=5$." + SUFFIX
    assert len(load_math_dataset("dapo", deduplicate=False)) == 6


def test_math_layout_takes_the_boxed_answer(fake_hub):
    ds = load_math_dataset("math")
    assert ds["solution"] == ["\\frac{3}{4}"]


def test_benchmarks_fall_back_to_the_hub_and_explain_offline_failures(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("DISCO_BENCHMARK_DIR", str(tmp_path))  # an empty folder: no local files
    with pytest.raises(RuntimeError, match="no network in tests"):
        load_math_dataset("aime24")
    assert fake_hub[-1] == ("HuggingFaceH4/aime_2024", "train", None)


def test_real_hub_error_message_names_the_offline_way_out(monkeypatch):
    import datasets

    def boom(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(RuntimeError, match="local JSON/JSONL/Parquet file"):
        load_math_dataset("someone/some-math-set")


def test_every_benchmark_has_a_local_file_name():
    assert set(data.BENCHMARK_FILES) == set(BENCHMARKS)
    assert all(name.endswith(".jsonl") for name in data.BENCHMARK_FILES.values())


# sha256 (first 16 hex digits) of each benchmark as loaded, rows as sorted-key JSON: a change to the loader that
# changes what any benchmark reads as shows here (recorded when load_math_dataset moved into disco_trl/data/).
LOADED_BENCHMARKS = {
    ("aime24", True): "ab418002580747b7", ("aime24", False): "af21881ee00864cb",
    ("aime25", True): "c033abec302d0064", ("aime25", False): "89faa4b2741071f7",
    ("math500", True): "1bbab8a86ad323be", ("math500", False): "aaede68a05f393a1",
    ("amc23", True): "74a97f14afbf16c2", ("amc23", False): "15d8500644f342df",
    ("minerva", True): "f90ccd2b42723df7", ("minerva", False): "c760d6a104f3d5d8",
    ("olympiadbench", True): "b801170883286296", ("olympiadbench", False): "a0e06339e1252fc9",
}


@pytest.mark.needs_benchmarks
@pytest.mark.parametrize("name, conversational", sorted(LOADED_BENCHMARKS))
def test_the_six_benchmarks_load_byte_identically(name, conversational):
    rows = load_math_dataset(name, conversational=conversational).to_list()
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    assert digest == LOADED_BENCHMARKS[(name, conversational)]



# ---------------------------------------------------------------------------------------------------------------------
# Local folders: save_to_disk datasets and folders of data files
# ---------------------------------------------------------------------------------------------------------------------

TRAIN_ROWS = [{"problem": "Train 1+1?", "answer": "2"}, {"problem": "Train 2+2?", "answer": "4"}]
TEST_ROWS = [{"problem": "Test 3+3?", "answer": "6"}]


def test_a_folder_saved_with_save_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(TRAIN_ROWS).save_to_disk(str(tmp_path / "single"))
    ds = load_math_dataset(str(tmp_path / "single"))
    assert ds["problem"] == ["Train 1+1?", "Train 2+2?"] and ds["solution"] == ["2", "4"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Train 1+1?" + SUFFIX}]

    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN_ROWS),
                                 "test": datasets.Dataset.from_list(TEST_ROWS)})
    both.save_to_disk(str(tmp_path / "dict"))
    assert load_math_dataset(str(tmp_path / "dict"))["problem"] == ["Train 1+1?", "Train 2+2?"]  # train by default
    assert load_math_dataset(str(tmp_path / "dict"), split="test")["solution"] == ["6"]
    with pytest.raises(ValueError, match=r"DatasetDict with the splits \['train', 'test'\]; pass split="):
        load_math_dataset(str(tmp_path / "dict"), split="validation")
    datasets.DatasetDict({"a": datasets.Dataset.from_list(TRAIN_ROWS), "b": datasets.Dataset.from_list(TEST_ROWS)}
                         ).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\]; pass split="):
        load_math_dataset(str(tmp_path / "no-train"))
    assert load_math_dataset(str(tmp_path / "no-train"), split="b")["solution"] == ["6"]


def test_a_folder_of_data_files_by_split(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    _write(folder / "train.jsonl", TRAIN_ROWS, "jsonl")
    _write(folder / "test.jsonl", TEST_ROWS, "jsonl")
    (folder / "README.md").write_text("# my set\n")
    assert load_math_dataset(str(folder))["solution"] == ["2", "4"]  # never train and test read as one
    assert load_math_dataset(str(folder), split="test")["problem"] == ["Test 3+3?"]
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\], not of split 'dev'"):
        load_math_dataset(str(folder), split="dev")

    hub_layout = tmp_path / "snapshot"  # the Hub's layout: data/<split>-00000-of-00001.parquet, metadata beside
    (hub_layout / "data").mkdir(parents=True)
    (hub_layout / ".cache").mkdir()
    _write(hub_layout / "data" / "train-00000-of-00002.parquet", TRAIN_ROWS[:1], "parquet")
    _write(hub_layout / "data" / "train-00001-of-00002.parquet", TRAIN_ROWS[1:], "parquet")
    _write(hub_layout / "data" / "test-00000-of-00001.parquet", TEST_ROWS, "parquet")
    _write(hub_layout / ".cache" / "train.jsonl", TEST_ROWS, "jsonl")  # hidden: not data
    (hub_layout / "dataset_infos.json").write_text("{}")
    assert load_math_dataset(str(hub_layout))["problem"] == ["Train 1+1?", "Train 2+2?"]
    assert load_math_dataset(str(hub_layout), split="test")["solution"] == ["6"]


def test_a_folder_of_unsplit_files_and_mixed_folders(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _write(folder / "part-a.jsonl", TRAIN_ROWS, "jsonl")
    _write(folder / "part-b.csv", TEST_ROWS, "csv")
    ds = load_math_dataset(str(folder))
    assert ds["problem"] == ["Train 1+1?", "Train 2+2?", "Test 3+3?"] and ds["solution"] == ["2", "4", "6"]
    _write(folder / "test.jsonl", TEST_ROWS, "jsonl")
    with pytest.raises(ValueError, match=r"mixes data files named after a split \(\['test'\]\) with others"):
        load_math_dataset(str(folder))


def test_a_folder_without_a_dataset_says_what_it_holds(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("hello")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError) as info:
        load_math_dataset(str(folder))
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "Hub" not in message
    assert "save_to_disk" in message and ".jsonl" in message and "README.md, model.safetensors, sub/" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no dataset.*nothing in it"):
        load_math_dataset(str(tmp_path / "empty"))


def test_a_relative_folder_name_is_a_folder(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    _write(tmp_path / "mine" / "rows.jsonl", TRAIN_ROWS, "jsonl")
    monkeypatch.chdir(tmp_path)
    assert load_math_dataset("mine")["solution"] == ["2", "4"]  # no "/": not taken for a Hub id or a known name


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_limit_below_one_is_refused(tmp_path, limit):
    path = tmp_path / "p.jsonl"
    _write(path, TRAIN_ROWS, "jsonl")
    with pytest.raises(ValueError, match=r"limit must be >= 1"):
        load_math_dataset(str(path), limit=limit)
    assert len(load_math_dataset(str(path), limit=1)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Chat datasets: the conversation before the problem is kept
# ---------------------------------------------------------------------------------------------------------------------

SYSTEM = "You are a careful competition mathematician."


def _chat_file(tmp_path, turns_before=(), after=()):
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": [*turns_before, {"role": "user", "content": q}, *after], "answer": a}
            for q, a in (("What is 6*7?", "42"), ("What is 2^5?", "32"))]
    _write(path, rows, "jsonl")
    return path


def test_a_chat_datasets_system_message_is_kept(tmp_path):
    path = _chat_file(tmp_path, turns_before=[{"role": "system", "content": SYSTEM}],
                      after=[{"role": "assistant", "content": "The answer is \\boxed{42}."}])
    ds = load_math_dataset(str(path))
    assert ds["problem"] == ["What is 6*7?", "What is 2^5?"]
    assert ds[0]["prompt"] == [{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": "What is 6*7?" + SUFFIX}]  # the answer turn is not kept
    plain = load_math_dataset(str(path), conversational=False)
    assert plain[1]["prompt"] == f"{SYSTEM}\n\nWhat is 2^5?" + SUFFIX
    # the same system message given again: one system message, not two
    assert load_math_dataset(str(path), system_prompt=SYSTEM)["prompt"] == ds["prompt"]


def test_a_system_prompt_that_conflicts_with_the_datasets_is_refused(tmp_path):
    path = _chat_file(tmp_path, turns_before=[{"role": "system", "content": SYSTEM}])
    with pytest.raises(ValueError, match=r"record 0: the conversation has its own system message.*system_prompt=None")\
            as info:
        load_math_dataset(str(path), system_prompt="Be brief.")
    assert "\n" not in str(info.value)


def test_earlier_turns_are_kept_and_a_plain_chat_gets_the_system_prompt(tmp_path):
    shot = [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "\\boxed{2}"}]
    ds = load_math_dataset(str(_chat_file(tmp_path, turns_before=shot)))
    assert ds[0]["prompt"] == [*shot, {"role": "user", "content": "What is 6*7?" + SUFFIX}]
    assert ds["problem"] == ["What is 6*7?", "What is 2^5?"]
    plain_chat = load_math_dataset(str(_chat_file(tmp_path)), system_prompt="Be brief.")
    assert plain_chat[0]["prompt"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "What is 6*7?" + SUFFIX}]
