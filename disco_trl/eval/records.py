"""The records of a `disco-trl eval` run and its output folder: what is done, what to resume, what to append.

Files (see `disco_trl.eval`): ``config.json`` (settings; resuming with other settings is refused),
``problems.jsonl`` and ``samples.jsonl`` (appended as the run goes), ``results.json`` and ``results.md``.
A run killed in the middle of a write leaves a partial last line: it is dropped (with a warning) before anything
is appended, so the next record starts on a line of its own and that sample is generated again. Damaged lines
elsewhere (not JSON, not a whole record) and records repeated by a later line are dropped once, with one warning
naming them: the file is rewritten atomically without them, so the next run is silent.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .identity import describe_change


__all__ = ["RESUME_KEYS", "RunRecords", "load_records", "repair_tail"]

# Settings that must match to resume into an existing output folder (num_samples and limit may grow); the model is
# compared by what it is (`model_identity`, see `identity`), not by its name.
RESUME_KEYS = ("temperature", "top_p", "max_new_tokens", "conversational", "system_prompt", "prompt_template",
               "seed", "sample_seeds")
# How samples are seeded (recorded in config.json): folders written before this rule are not resumed.
SAMPLE_SEEDS = "per (problem, sample)"
RESULT_FILES = ("samples.jsonl", "problems.jsonl", "results.json", "results.md")
SAMPLE_FIELDS = ("benchmark", "problem_id", "sample", "reward")  # what a sample record needs to be reused
PROBLEM_FIELDS = ("benchmark", "problem_id")


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


def _record_key(record: Any, required: tuple[str, ...]) -> tuple | None:
    """What a record stands for: (benchmark, problem_id[, sample], problem key); None when not a whole record."""
    if not isinstance(record, dict) or any(k not in record for k in required):
        return None
    if not isinstance(record["benchmark"], str):
        return None
    ids = [record[k] for k in ("problem_id", "sample") if k in required]
    if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
        return None
    return (record["benchmark"], *ids, record.get("key"))


def _scan(path: Path, required: tuple[str, ...]) -> tuple[dict[tuple, tuple[int, dict]], dict[int, str]]:
    """{record key: (line number, record)} keeping the last of repeated records, and {line number: why dropped}."""
    kept: dict[tuple, tuple[int, dict]] = {}
    dropped: dict[int, str] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                dropped[number] = "not JSON"
                continue
            key = _record_key(record, required)
            if key is None:
                dropped[number] = f"not a record with {', '.join(required)}"
            else:
                if key in kept:
                    dropped[kept[key][0]] = f"repeated by line {number}"
                kept[key] = (number, record)
    return kept, dropped


def _rewrite_without(path: Path, dropped: set[int]) -> None:
    """`path` without the lines `dropped` (and blank lines), replaced atomically: a crash leaves the old file."""
    tmp = path.with_name(path.name + ".repair.tmp")
    with open(path, "rb") as source, open(tmp, "wb") as target:
        for number, line in enumerate(source, start=1):
            if number not in dropped and line.strip():
                target.write(line)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, path)


def _line_list(dropped: dict[int, str]) -> str:
    shown = [f"line {n} ({why})" for n, why in sorted(dropped.items())[:10]]
    return ", ".join(shown) + (f" and {len(dropped) - 10} more" if len(dropped) > 10 else "")


def load_records(path: Path, required: tuple[str, ...], what: str) -> list[dict]:
    """The records of a JSON Lines file of the output folder, repaired first, so that damage is reported once: a
    partial last line is cut off (`repair_tail`); damaged lines elsewhere (not JSON, not a whole record) and records
    repeated by a later line are dropped with one warning naming them, and the file is rewritten without them."""
    repair_tail(path, what)
    if not path.is_file():
        return []
    kept, dropped = _scan(path, required)
    if dropped:
        _rewrite_without(path, set(dropped))
        warnings.warn(
            f"{path}: dropped {len(dropped)} damaged or repeated line(s): {_line_list(dropped)}; the file is "
            f"rewritten without them; {what}.",
            stacklevel=3,
        )
    return [record for _, record in sorted(kept.values(), key=lambda item: item[0])]


def _check_same_settings(out_dir: Path, config: dict[str, Any]) -> None:
    config_path = out_dir / "config.json"
    if not config_path.is_file():
        return
    previous = json.loads(config_path.read_text())
    _check_same_model(out_dir, previous, config)
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


def _check_same_model(out_dir: Path, previous: dict[str, Any], config: dict[str, Any]) -> None:
    """ValueError when the samples in `out_dir` were drawn from another model (see `identity`)."""
    before, now = previous.get("model_identity"), config["model_identity"]
    if before == now:
        return
    if before is None:
        why = ("it was written by an older disco-trl that recorded the model by its name only "
               f"({previous.get('model')!r}), so whether its samples are of these weights cannot be told")
    else:
        why = (f"its samples were drawn from another model ({previous.get('model')!r} then, {config['model']!r} now): "
               f"{describe_change(before, now)}")
    raise ValueError(
        f"evaluate: {out_dir} holds samples that cannot be reused: {why}. Use another output_dir, or resume=False "
        "(--overwrite) to discard them and sample this model."
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
        for record in load_records(samples, SAMPLE_FIELDS, "the samples of dropped lines are generated again"):
            self.done.setdefault((record["benchmark"], record["problem_id"]), {})[record["sample"]] = record
        for row in load_records(problems, PROBLEM_FIELDS, "the problems of dropped lines are recorded again"):
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
