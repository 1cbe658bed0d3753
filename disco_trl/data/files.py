"""Reading the rows of a local dataset file (JSON, JSON Lines, Parquet, CSV; optionally gzip-compressed) or folder
for `disco_trl.data.load_math_dataset`.

Text files are read as ``utf-8-sig``: a byte-order mark (as Excel and some Windows tools write) is dropped instead
of becoming part of the first column name. A file without rows is refused with one line naming it.

A folder is either a dataset saved with ``datasets``' ``save_to_disk`` (a ``Dataset``: ``state.json``; a
``DatasetDict``: ``dataset_dict.json``, one sub-folder per split, of which `split` picks one), or a folder of data
files (searched in sub-folders too; hidden ones skipped). Data files named after a split (``train.jsonl``,
``test-00000-of-00001.parquet``, ``train/part-0.csv``: the Hub's layout) are grouped by it, and `split` (default
``train``, or the only split) says which group is read: a train and a test file are never read as one dataset.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq


LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gz")
TEXT_ENCODING = "utf-8-sig"  # utf-8, and a leading byte-order mark is skipped
DATA_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz", ".parquet", ".pq", ".csv")
# datasets' own metadata files, which are not rows
METADATA_FILES = ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json")
_SPLIT_NAME = re.compile(r"^(train|test|validation|valid|val|dev|eval)(?=$|[-_.\d])", re.IGNORECASE)


def read_local_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    """The rows of a local file as dicts; ValueError when the file is empty or of an unknown type."""
    rows = _read_by_suffix(path, split)
    if not rows:
        raise ValueError(f"load_math_dataset: {path} is empty (no rows).")
    return rows


def read_local_folder(path: Path, split: str | None) -> Any:
    """The rows of a dataset folder (see the module): a `datasets.Dataset`, or a list of dicts from data files."""
    if (path / "dataset_dict.json").is_file():
        return _pick_saved_split(path, datasets.load_from_disk(str(path)), split)
    if (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files = [f for f in sorted(path.rglob("*")) if _is_data_file(f, path)]
    if not files:
        raise ValueError(
            f"load_math_dataset: the folder {path} holds no dataset: neither one saved with save_to_disk "
            "(state.json, or dataset_dict.json) nor data files (.json, .jsonl, .parquet, .csv, optionally .gz); it "
            f"has {_listing(path)}. Pass such a folder, or a data file."
        )
    rows = [row for f in _files_of_split(path, files, split) for row in _read_by_suffix(f, split)]
    if not rows:
        raise ValueError(f"load_math_dataset: the data files in {path} are empty (no rows).")
    return rows


def _is_data_file(file: Path, root: Path) -> bool:
    relative = file.relative_to(root)
    if any(part.startswith(".") for part in relative.parts) or not file.is_file():
        return False
    return _suffix(file) in DATA_FILE_SUFFIXES and file.name not in METADATA_FILES


def _listing(path: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return "nothing in it"
    return ", ".join(entries[:10]) + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")


def _pick_saved_split(path: Path, splits: Any, split: str | None) -> Any:
    names = list(splits)
    if split is None and len(names) == 1:
        split = names[0]
    if split is None and "train" in names:
        split = "train"
    if split not in names:
        raise ValueError(f"load_math_dataset: {path} is a DatasetDict with the splits {names}; pass split= one of "
                         "them.")
    return splits[split]


def _split_of(relative: Path) -> str | None:
    """The split a data file is named after (a folder or the start of its name: train, test-0000...), if any."""
    for part in (*relative.parts[:-1], relative.name.split(".")[0]):
        match = _SPLIT_NAME.match(part)
        if match:
            return match.group(1).lower()
    return None


def _files_of_split(path: Path, files: list[Path], split: str | None) -> list[Path]:
    """The data files to read: all of them when none is named after a split, else those of `split`."""
    groups: dict[str | None, list[Path]] = {}
    for file in files:
        groups.setdefault(_split_of(file.relative_to(path)), []).append(file)
    if list(groups) == [None]:
        return files
    if None in groups:
        raise ValueError(
            f"load_math_dataset: {path} mixes data files named after a split ({sorted(g for g in groups if g)}) with "
            f"others ({', '.join(str(f.relative_to(path)) for f in groups[None][:5])}); which rows are which split "
            "cannot be told. Pass one file, or a folder of one kind."
        )
    names = sorted(groups)
    if split is None and len(names) == 1:
        split = names[0]
    chosen = groups.get((split or "train").lower())
    if chosen is None:
        raise ValueError(f"load_math_dataset: {path} has data files of the splits {names}, not of split "
                         f"{split or 'train'!r} (the default); pass split= one of them.")
    return chosen


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()


def _read_by_suffix(path: Path, split: str | None) -> list[dict[str, Any]]:
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
        return _read_jsonl(path)
    if suffix in (".json", ".json.gz"):
        return _read_json(path, split)
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path).to_pylist()
    if suffix in (".csv",):
        with open(path, newline="", encoding=TEXT_ENCODING) as handle:
            return list(csv.DictReader(handle))
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .parquet or .csv.")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}: line {number} is not valid JSON ({exc}).") from exc
    return rows


def _read_json(path: Path, split: str | None) -> list[dict[str, Any]]:
    with _open_text(path) as handle:
        text = handle.read()
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError:  # JSON Lines saved as .json
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, Mapping):
        for key in (split, "train", "test", "data", "rows", "examples"):
            if key and isinstance(data.get(key), list):
                return list(data[key])
        raise ValueError(
            f"{path}: a JSON object, not a list of rows; expected a list, or a key such as 'train'/'test'/'data' "
            "holding one."
        )
    return list(data)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=TEXT_ENCODING)
    return open(path, encoding=TEXT_ENCODING)
