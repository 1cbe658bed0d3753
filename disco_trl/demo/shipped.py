"""The demo's starting model as files: the one shipped with the package, its record, its fingerprint.

Every machine starts the demo, `compare` and `study` from the same model: `disco_trl/demo/shipped_start/`, built once
by `warmstart.build_warm_started` with the default `WarmStartConfig` and saved with `save_pretrained` (model and
tokenizer). Beside the files, `start.json` records how it was built (the config, the SFT loss, library versions, the
machine and thread count), its held-out Pass@1 under the demo's evaluation, and a sha256 of every file.

The **fingerprint** names a start by its content: a hash of the weights file and of the tokenizer file (not of
`config.json`, which carries the transformers version that wrote it). Run files and the study's start evaluations
are keyed by it (`model_key`), so a result is reused only for the very same model. `shipped_start()` checks every
file against the record before use and refuses a damaged one loudly. `compare_starts` says how far a rebuilt start
is from the shipped one: the SFT is not bit-reproducible across CPUs and thread counts (floating-point sums in
another order, amplified by 600 steps at a high learning rate), so a rebuild elsewhere is expected to differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file


SHIPPED_DIR = Path(__file__).resolve().parent / "shipped_start"
RECORD = "start.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "trl")


class DamagedStart(ValueError):
    """A start folder whose files are missing or do not match its record."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: str | os.PathLike) -> str:
    """The start's content hash (16 hex digits): sha256 over the sha256 of its weights file and of its tokenizer
    file. A folder without them is refused (the demo's starts are `save_pretrained` folders in safetensors)."""
    folder = Path(folder)
    missing = [name for name in (WEIGHTS, TOKENIZER) if not (folder / name).is_file()]
    if missing:
        raise DamagedStart(f"{folder} has no {' or '.join(missing)}: a start model is a save_pretrained folder of "
                           f"a model (safetensors) and its tokenizer.")
    lines = "".join(f"{name}:{file_sha256(folder / name)}\n" for name in (WEIGHTS, TOKENIZER))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def model_key(model_path: str | os.PathLike) -> str:
    """What cached results key on: the start's fingerprint, from its files (the same model on any path)."""
    return f"start-{fingerprint(model_path)}"


def environment() -> dict:
    """The libraries, interpreter and machine a start is built on (a rebuild elsewhere can differ in these)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "libraries": versions, "machine": platform.machine(),
            "cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_record(folder: str | os.PathLike, build: dict, **extra) -> dict:
    """`start.json` for the model files already in `folder`: `build` (what `build_warm_started` returned), `extra`
    fields (e.g. the start's held-out evaluation), the environment, every file's sha256 and the fingerprint."""
    folder = Path(folder)
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != RECORD}
    record = {"fingerprint": fingerprint(folder), "build": build, **extra, "environment": environment(),
              "files": files}
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def write_start(model, tokenizer, build: dict, folder: str | os.PathLike, **extra) -> dict:
    """Save a built start (`save_pretrained` of model and tokenizer) with its record; returns the record."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return write_record(folder, build, **extra)


def read_record(folder: str | os.PathLike) -> dict:
    path = Path(folder) / RECORD
    if not path.is_file():
        raise DamagedStart(f"{folder} has no {RECORD}: it is not a start folder written by disco-trl.")
    return json.loads(path.read_text())


def verify(folder: str | os.PathLike) -> dict:
    """The folder's record, after checking every recorded file's sha256 and the fingerprint; `DamagedStart` names
    each file that is missing or changed."""
    folder = Path(folder)
    record = read_record(folder)
    problems = []
    for name, sha in record.get("files", {}).items():
        if not (folder / name).is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(folder / name) != sha:
            problems.append(f"{name} does not match its recorded sha256 {sha[:12]}...")
    if not problems and fingerprint(folder) != record.get("fingerprint"):
        problems.append(f"the fingerprint is not the recorded {record.get('fingerprint')}")
    if problems:
        raise DamagedStart(f"the start model in {folder} is damaged: {'; '.join(problems)}. Reinstall disco-trl (in "
                           f"a clone: git checkout -- {folder}), or rebuild it: disco-trl demo --rebuild-start")
    return record


def shipped_start() -> tuple[str, dict]:
    """The shipped start's folder and record, verified."""
    return str(SHIPPED_DIR), verify(SHIPPED_DIR)


def start_summary(folder: str | os.PathLike) -> dict:
    """What a result records about its start: fingerprint, parameters, SFT loss, build config (when recorded)."""
    summary = {"fingerprint": fingerprint(folder)}
    if (Path(folder) / RECORD).is_file():
        build = read_record(folder).get("build", {})
        summary.update({k: build[k] for k in ("config", "num_parameters", "vocab_size", "sft_final_loss")
                        if k in build})
    return summary


def weight_difference(folder_a: str | os.PathLike, folder_b: str | os.PathLike) -> dict:
    """The largest |difference| of any weight between two starts, and in which tensor; None if their tensors do
    not line up (other names or shapes)."""
    a, b = load_file(Path(folder_a) / WEIGHTS), load_file(Path(folder_b) / WEIGHTS)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return {"max_abs": None, "tensor": None, "note": "the two models' tensors differ in names or shapes"}
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() if a[k].numel() else 0.0 for k in sorted(a)}
    worst = max(diffs, key=diffs.get)
    scale = max(a[k].float().abs().max().item() for k in a)
    return {"max_abs": diffs[worst], "tensor": worst, "largest_weight": scale,
            "identical_tensors": sum(v == 0.0 for v in diffs.values()), "tensors": len(diffs)}


def same_tokenizer(folder_a: str | os.PathLike, folder_b: str | os.PathLike) -> str:
    """"identical file", "same vocabulary and merges" (another serialisation), or "different"."""
    path_a, path_b = Path(folder_a) / TOKENIZER, Path(folder_b) / TOKENIZER
    if file_sha256(path_a) == file_sha256(path_b):
        return "identical file"
    a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    keys = lambda t: (t["model"].get("vocab"), t["model"].get("merges"), [x["content"] for x in t["added_tokens"]])  # noqa: E731
    return "same vocabulary and merges" if keys(a) == keys(b) else "different"


def compare_starts(rebuilt: str | os.PathLike, reference: str | os.PathLike) -> dict:
    """How a rebuilt start compares with a reference one (normally the shipped start): fingerprints, tokenizer,
    largest weight difference, and the SFT loss and start Pass@1 each record holds."""
    rec_new, rec_ref = read_record(rebuilt), read_record(reference)
    same = rec_new["fingerprint"] == rec_ref["fingerprint"]

    def pair(get):
        return {"rebuilt": get(rec_new), "reference": get(rec_ref)}

    return {
        "match": same,
        "fingerprint": pair(lambda r: r["fingerprint"]),
        "tokenizer": same_tokenizer(rebuilt, reference),
        "weights": None if same else weight_difference(rebuilt, reference),
        "sft_final_loss": pair(lambda r: r["build"].get("sft_final_loss")),
        "start_pass@1": pair(lambda r: (r.get("start_eval") or {}).get("pass@1")),
        "environment": pair(lambda r: r.get("environment")),
    }
