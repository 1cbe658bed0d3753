"""The `disco-trl eval` command line: flags to `disco_trl.eval.evaluate`, errors as one line.

Bad input or an environment problem (a missing model path, an empty benchmark file, settings that differ from the
run already in the output folder, no network for a Hub id...) prints one line, ``disco-trl eval: error: ...``, on
stderr and exits with status 1; set ``DISCO_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .benchmarks import DEFAULT_BENCHMARKS
from .metrics import format_markdown
from .run import evaluate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disco-trl eval",
        description="Pass@1 averaged over samples and pass@k on math benchmarks (the DisCO paper's protocol).",
    )
    p.add_argument("--model", required=True, help="model path or Hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or Hub id (default: the model's)")
    p.add_argument(
        "--benchmarks", nargs="+", default=list(DEFAULT_BENCHMARKS),
        help="benchmark names (aime24 aime25 math500 amc23 minerva olympiadbench, or all) or local files",
    )
    p.add_argument("--num-samples", type=int, default=16, help="samples per problem (default 16)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--k", type=int, nargs="+", default=None, help="pass@k values to report (default 1,2,4,..,n)")
    p.add_argument("--output-dir", default=None, help="default: eval_results/<model name>")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate() call (transformers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-text", action="store_true", help="plain-text prompts instead of the chat template")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", default=None, help="transformers backend: cpu, cuda, cuda:1 ...")
    p.add_argument("--tensor-parallel-size", type=int, default=None, help="vLLM")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM")
    p.add_argument("--overwrite", action="store_true", help="discard records already in the output folder")
    p.add_argument("--no-progress", action="store_true")
    return p


# Bad input and environment problems: one line on stderr, no traceback (DISCO_DEBUG=1 shows it).
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output_dir = args.output_dir or str(Path("eval_results") / Path(args.model.rstrip("/")).name)
    try:
        results = _run_cli(args, output_dir)
    except _USER_ERRORS as exc:
        if os.environ.get("DISCO_DEBUG"):
            raise
        print(f"disco-trl eval: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(format_markdown(results, title=results["config"]["model"]))
    print(f"Records and results: {Path(output_dir).resolve()}")
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text.removeprefix("evaluate: ")


def _run_cli(args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    return evaluate(
        args.model,
        args.benchmarks,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        output_dir=output_dir,
        tokenizer=args.tokenizer,
        limit=args.limit,
        backend=args.backend,
        batch_size=args.batch_size,
        seed=args.seed,
        k_values=args.k,
        conversational=not args.plain_text,
        system_prompt=args.system_prompt,
        dtype=args.dtype,
        device=args.device,
        resume=not args.overwrite,
        progress=not args.no_progress,
        vllm_kwargs=dict(
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
        ),
    )

