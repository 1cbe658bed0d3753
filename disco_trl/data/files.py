"""Reading the rows of a local dataset file (JSON, JSON Lines, Parquet, CSV; optionally gzip-compressed) for
`disco_trl.data.load_math_dataset`.

Text files are read as ``utf-8-sig``: a byte-order mark (as Excel and some Windows tools write) is dropped instead
of becoming part of the first column name. A file without rows is refused with one line naming it.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gz")
TEXT_ENCODING = "utf-8-sig"  # utf-8, and a leading byte-order mark is skipped


def read_local_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    """The rows of a local file as dicts; ValueError when the file is empty or of an unknown type."""
    rows = _read_by_suffix(path, split)
    if not rows:
        raise ValueError(f"load_math_dataset: {path} is empty (no rows).")
    return rows


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
