"""What model an evaluation ran: the identity `disco-trl eval` records in ``config.json`` and compares on resume.

A resumed run reuses the samples already in its output folder only when the model is the same one, judged by what
the model is, not by how it was named:

* a local folder (or file): a fingerprint of each of its files (top level; sub-folders, hidden files and ``*.md`` are
  not part of the model): name, size, modification time in nanoseconds, and a digest of its bytes: all of them for
  a file up to `WHOLE_FILE_BYTES`, else the safetensors header (tensor names, dtypes, shapes, offsets) and
  `CHUNKS` evenly spaced chunks of `CHUNK_BYTES`. ``./m``, ``m`` and ``/abs/m`` are the same folder and get the
  same fingerprint. Cost: a few stats and at most about 1 MiB read per file, whatever the model's size. Enough
  because writing weights (``save_pretrained``, a trainer's checkpoint, ``cp``, ``mv`` of another folder) gives
  the files a new modification time, which the fingerprint holds exactly (a retrained model cannot be written
  before the evaluation of the old one that it replaces has read the folder); copies that keep the times
  (``cp -p``, ``rsync -a``, tar) are of other files, whose sizes, headers or sampled bytes differ. Not caught:
  bytes edited in place with the modification time set back by hand.
* a Hub id: the id (the weights behind an id can change on the Hub: pin them by evaluating a downloaded folder).
* an in-memory model: SHA-256 of its state dict (names, dtypes, shapes and every byte), and of its config: exact,
  at the price of one pass over the weights (about 1-5 s per GB), paid only when there is an output folder.

The tokenizer, when it is given apart from the model, is identified the same way (a folder, a Hub id, or, in memory,
a hash of its vocabulary, special tokens and chat template): it makes the prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch


__all__ = ["describe_change", "file_fingerprints", "model_identity"]

WHOLE_FILE_BYTES = 1 << 20  # files up to this size are hashed whole (configs, tokenizers, tiny models)
CHUNK_BYTES = 1 << 16
CHUNKS = 16
MAX_SAFETENSORS_HEADER = 100 << 20


def _is_model_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() != ".md"


def _safetensors_header(handle, size: int) -> bytes:
    """The JSON header of a safetensors file (empty when the file is not one)."""
    handle.seek(0)
    prefix = handle.read(8)
    if len(prefix) < 8:
        return b""
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, MAX_SAFETENSORS_HEADER):
        return b""
    return handle.read(length)


def _content_digest(path: Path, size: int) -> str:
    """Every byte of a small file; the safetensors header and evenly spaced chunks of a large one."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            digest.update(handle.read())
        else:
            if path.suffix == ".safetensors":
                digest.update(_safetensors_header(handle, size))
            for i in range(CHUNKS):
                handle.seek((size - CHUNK_BYTES) * i // (CHUNKS - 1))
                digest.update(handle.read(CHUNK_BYTES))
    return digest.hexdigest()[:16]


def file_fingerprints(path: str | os.PathLike) -> dict[str, str]:
    """{file name: "size mtime_ns digest"} for a model folder's files (or for one file)."""
    root = Path(path).expanduser().resolve()
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if _is_model_file(p))
    out = {}
    for file in files:
        stat = file.stat()
        out[file.name] = f"{stat.st_size} {stat.st_mtime_ns} {_content_digest(file, stat.st_size)}"
    return out


def _source_identity(source: str | os.PathLike) -> dict[str, Any]:
    if Path(source).expanduser().exists():
        return {"local": file_fingerprints(source)}
    return {"hub": os.fspath(source)}


def _state_dict_digest(model: Any) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes, bytes: tensor by tensor, so one tensor at a time leaves
    the device) and of its config."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            raise ValueError(
                f"evaluate: the in-memory model's weight {name!r} is not in memory (offloaded, on the meta device), "
                "so which weights made the samples cannot be recorded; evaluate its saved folder, or pass "
                "output_dir=None."
            )
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def _tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the whole tokenizer, less the padding / truncation state that encoding calls set
        described = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        vocab = json.dumps(described, sort_keys=True)
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [vocab, json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str),
             str(getattr(tokenizer, "chat_template", None))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def model_identity(model: Any, tokenizer: Any = None) -> dict[str, Any]:
    """What `model` (a path, a Hub id or an in-memory model) and a tokenizer given apart from it are."""
    if isinstance(model, str | os.PathLike):
        identity = {"model": _source_identity(model)}
    else:
        identity = {"model": {"in_memory_sha256": _state_dict_digest(model)}}
    if isinstance(tokenizer, str | os.PathLike):
        identity["tokenizer"] = _source_identity(tokenizer)
    elif tokenizer is not None and "in_memory_sha256" in identity["model"]:  # a path's own tokenizer is in its files
        identity["tokenizer"] = {"in_memory_sha256": _tokenizer_digest(tokenizer)}
    return identity


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How two identities differ, in words (which files changed, or which id replaced which)."""
    parts = []
    for role in ("model", "tokenizer"):
        before, after = old.get(role), new.get(role)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and "local" in before and "local" in after:
            files_before, files_after = before["local"], after["local"]
            names = set(files_before) | set(files_after)
            changed = sorted(n for n in names if files_before.get(n) != files_after.get(n))
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            parts.append(f"the {role}'s files changed since ({shown}: rewritten, replaced, added or removed)")
        else:
            parts.append(f"the {role} was {_short(before)}, it is now {_short(after)}")
    return "; ".join(parts) or "the model differs"


def _short(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "not recorded"
    if "hub" in identity:
        return f"the Hub id {identity['hub']!r}"
    if "local" in identity:
        return f"a local folder of {len(identity['local'])} files"
    return f"an in-memory object with weights/vocabulary sha256 {identity.get('in_memory_sha256', '?')[:12]}"
