"""Where a math dataset's rows come from: the known sources (training sets and the paper's six benchmarks), the
local benchmark folder, local files and folders, and the Hugging Face Hub."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .files import LOCAL_SUFFIXES, read_local_folder, read_local_rows


@dataclass(frozen=True)
class SourceSpec:
    """Where a known dataset lives and which fields hold its problem and answer."""

    hub_id: str
    split: str
    question_fields: tuple[str, ...]
    answer_fields: tuple[str, ...] = ()  # fields holding the final answer, tried in order
    boxed_solution_fields: tuple[str, ...] = ()  # else: the last \boxed{} of one of these fields
    config: str | None = None
    local_file: str | None = None  # benchmark file name inside benchmark_dir()
    deduplicate: bool = False


SOURCES: dict[str, SourceSpec] = {
    # Training sets
    "deepscaler": SourceSpec(
        "agentica-org/DeepScaleR-Preview-Dataset", "train", ("problem",), ("answer",), ("solution",)
    ),
    "dapo-math-17k": SourceSpec(
        "BytedTsinghua-SIA/DAPO-Math-17k",
        "train",
        ("prompt",),
        ("reward_model.ground_truth",),
        deduplicate=True,  # the published file repeats each of its ~17k problems about 100 times
    ),
    "math": SourceSpec("DigitalLearningGmbH/MATH-lighteval", "train", ("problem",), (), ("solution",)),
    # The six benchmarks of the paper (local copies in benchmark_dir() are preferred when present)
    "aime24": SourceSpec(
        "HuggingFaceH4/aime_2024", "train", ("problem", "question"), ("answer",), local_file="aime24.jsonl"
    ),
    "aime25": SourceSpec("math-ai/aime25", "test", ("problem", "question"), ("answer",), local_file="aime25.jsonl"),
    "amc23": SourceSpec("math-ai/amc23", "test", ("problem", "question"), ("answer",), local_file="amc23.jsonl"),
    "math500": SourceSpec(
        "HuggingFaceH4/MATH-500", "test", ("problem",), ("answer",), ("solution",), local_file="math500.jsonl"
    ),
    "minerva": SourceSpec(
        "math-ai/minervamath", "test", ("problem", "question"), ("answer",), ("solution",),
        local_file="minerva_math.jsonl",
    ),
    "olympiadbench": SourceSpec(
        "math-ai/olympiadbench", "test", ("question", "problem"), ("final_answer", "answer"), ("solution",),
        local_file="olympiadbench.jsonl",
    ),
}
ALIASES = {
    "dapo": "dapo-math-17k",
    "dapo_math_17k": "dapo-math-17k",
    "dapo-math": "dapo-math-17k",
    "deepscaler-preview": "deepscaler",
    "aime2024": "aime24",
    "aime_2024": "aime24",
    "aime2025": "aime25",
    "aime_2025": "aime25",
    "amc2023": "amc23",
    "amc": "amc23",
    "math-500": "math500",
    "math_500": "math500",
    "minerva_math": "minerva",
    "minervamath": "minerva",
    "olympiad": "olympiadbench",
    "olympiad_bench": "olympiadbench",
}
BENCHMARKS = ("aime24", "aime25", "math500", "amc23", "minerva", "olympiadbench")
BENCHMARK_FILES = {name: SOURCES[name].local_file for name in BENCHMARKS}


def canonical_source(source: str) -> str | None:
    key = source.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in SOURCES else None


def benchmark_dir() -> Path | None:
    """The folder with the benchmark JSONL files: $DISCO_BENCHMARK_DIR, else ../shared/data/benchmarks of the repo."""
    env = os.environ.get("DISCO_BENCHMARK_DIR")
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"
    return candidate if candidate.is_dir() else None



def read_hub(hub_id: str, split: str, config: str | None) -> Any:
    try:
        return datasets.load_dataset(hub_id, *([config] if config else []), split=split)
    except Exception as exc:  # noqa: BLE001 - re-raised with the way out
        raise RuntimeError(
            f"Could not load {hub_id!r} (split {split!r}) from the Hugging Face Hub: {exc}\n"
            "Offline? Pass a local JSON/JSONL/Parquet file or a dataset folder instead (load_math_dataset("
            "'path/to/file.jsonl')), or for "
            "the benchmarks point DISCO_BENCHMARK_DIR at a folder with the benchmark files."
        ) from exc



def read_source(source: str, spec: SourceSpec | None, *, split: str | None, config: str | None,
                 local: bool | None) -> tuple[Any, str]:
    """The rows (a list of dicts or a `datasets.Dataset`) and where they came from (a path or a Hub id)."""
    path = Path(source).expanduser()
    if spec is None and path.is_dir():
        return read_local_folder(path, split), str(path)
    if spec is None and (path.is_file() or path.suffix.lower() in LOCAL_SUFFIXES):
        if not path.is_file():
            raise FileNotFoundError(f"load_math_dataset: no such file {str(path)!r}.")
        return read_local_rows(path, split), str(path)
    if spec is not None:
        folder = benchmark_dir() if spec.local_file and local is not False else None
        if folder is not None and (folder / spec.local_file).is_file():
            return read_local_rows(folder / spec.local_file, split), str(folder / spec.local_file)
        if local:
            raise FileNotFoundError(
                f"load_math_dataset({source!r}, local=True): no {spec.local_file or 'local file'} in "
                f"{benchmark_dir() or '(no benchmark folder found)'}; set DISCO_BENCHMARK_DIR to the folder that has "
                "it."
            )
        return read_hub(spec.hub_id, split or spec.split, config or spec.config), spec.hub_id
    if "/" not in source:
        known = ", ".join(sorted(SOURCES))
        raise ValueError(
            f"load_math_dataset: {source!r} is neither a known source ({known}), a Hub id (owner/name) nor an "
            "existing local file or folder."
        )
    return read_hub(source, split or "train", config), source

