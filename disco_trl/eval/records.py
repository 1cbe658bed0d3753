"""The records of a `disco-trl eval` run and its output folder: what is done, what to resume, what to append.

Files (see `disco_trl.eval`): ``config.json`` (settings; resuming with other settings is refused),
``problems.jsonl`` and ``samples.jsonl`` (appended as the run goes), ``results.json`` and ``results.md``.
A run killed in the middle of a write leaves a partial last line: it is dropped (with a warning) before anything
is appended, so the next record starts on a line of its own and that sample is generated again.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any


__all__ = ["RESUME_KEYS", "RunRecords", "read_jsonl", "repair_tail"]

# Settings that must match to resume into an existing output folder (num_samples and limit may grow).
RESUME_KEYS = ("model", "temperature", "top_p", "max_new_tokens", "conversational", "system_prompt", "prompt_template",
               "seed", "sample_seeds")
# How samples are seeded (recorded in config.json): folders written before this rule are not resumed.
SAMPLE_SEEDS = "per (problem, sample)"
RESULT_FILES = ("samples.jsonl", "problems.jsonl", "results.json", "results.md")


def repair_tail(path: Path, what: str) -> None:
    """Make `path` end with a newline: a complete last record only lacks one; a partial one is cut off, loudly."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            handle.write(b"\n")
            return
        except ValueError:
            handle.truncate(start)
    warnings.warn(
        f"{path}: dropped a partial last line (the previous run was interrupted while writing it); {what}.",
        stacklevel=3,
    )


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file; a line that is not JSON is skipped with a warning."""
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                warnings.warn(f"{path}: line {number} is not valid JSON; skipped (its record is made again).",
                              stacklevel=2)
    return rows


def _check_same_settings(out_dir: Path, config: dict[str, Any]) -> None:
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        return
    previous = json.loads(config_path.read_text())
    changed = {k: (previous.get(k), config[k]) for k in RESUME_KEYS if previous.get(k) != config[k]}
    if not changed:
        return
    why = ""
    if "sample_seeds" in changed and previous.get("sample_seeds") is None:
        why = (" (it was written by an older disco-trl whose seeds depended on the batch number: samples added by "
               "raising num_samples there may be copies of earlier ones)")
    raise ValueError(
        f"evaluate: {out_dir} holds a run with other settings {changed} (old, new){why}; use another output_dir, "
        "or resume=False (--overwrite) to start over."
    )


class RunRecords:
    """Samples done so far, by (benchmark, problem_id) then sample index, and the output folder they go to."""

    def __init__(self, out_dir: Path | None = None):
        self.out_dir = out_dir
        self.done: dict[tuple[str, int], dict[int, dict]] = {}
        self.known_problems: set[tuple[str, int, str | None]] = set()
        self._samples_file = None

    @classmethod
    def open(cls, output_dir: str | os.PathLike | None, config: dict[str, Any], *, resume: bool) -> RunRecords:
        """The records of `output_dir` (created if needed), checked against `config`; in memory when None."""
        if output_dir is None:
            return cls(None)
        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _check_same_settings(out_dir, config)
        else:
            for name in RESULT_FILES:
                (out_dir / name).unlink(missing_ok=True)
        records = cls(out_dir)
        records._load()
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return records

    def _load(self) -> None:
        samples, problems = self.out_dir / "samples.jsonl", self.out_dir / "problems.jsonl"
        repair_tail(samples, "its sample is generated again")
        repair_tail(problems, "its problem is recorded again")
        for record in read_jsonl(samples):
            self.done.setdefault((record["benchmark"], record["problem_id"]), {})[record["sample"]] = record
        for row in read_jsonl(problems):
            self.known_problems.add((row["benchmark"], row["problem_id"], row.get("key")))

    def missing(self, benchmark: str, problem_id: int, key: str, num_samples: int) -> list[int]:
        """Sample indices below `num_samples` not done yet; ValueError when the records are of another problem."""
        existing = self.done.get((benchmark, problem_id), {})
        if any(r.get("key", key) != key for r in existing.values()):
            raise ValueError(
                f"evaluate: the records in {self.out_dir} for {benchmark} problem {problem_id} belong to another "
                "problem (the benchmark file changed?); use another output_dir or resume=False."
            )
        return [j for j in range(num_samples) if j not in existing]

    def add_problems(self, rows: Iterable[dict[str, Any]]) -> None:
        new = [r for r in rows if (r["benchmark"], r["problem_id"], r["key"]) not in self.known_problems]
        if self.out_dir is None or not new:
            return
        with open(self.out_dir / "problems.jsonl", "a", encoding="utf-8") as handle:
            for row in new:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.known_problems.update((r["benchmark"], r["problem_id"], r["key"]) for r in new)

    def add_samples(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep and append these sample records (flushed: an interrupted run loses at most the batch in flight)."""
        if self.out_dir is not None and self._samples_file is None:
            self._samples_file = open(self.out_dir / "samples.jsonl", "a", encoding="utf-8")
        for rec in records:
            self.done.setdefault((rec["benchmark"], rec["problem_id"]), {})[rec["sample"]] = rec
            if self._samples_file is not None:
                self._samples_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if self._samples_file is not None:
            self._samples_file.flush()

    def count(self) -> int:
        return sum(len(v) for v in self.done.values())

    def rewards(self, benchmark: str, problem_id: int, num_samples: int) -> list[float]:
        samples = self.done.get((benchmark, problem_id), {})
        return [samples[j]["reward"] for j in range(num_samples) if j in samples]

    def write_results(self, summary: dict[str, Any], markdown: str) -> None:
        if self.out_dir is not None:
            (self.out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
            (self.out_dir / "results.md").write_text(markdown)

    def close(self) -> None:
        if self._samples_file is not None:
            self._samples_file.close()
            self._samples_file = None
