r"""`disco-trl eval`: Pass@1 averaged over samples, and pass@k, on the paper's math benchmarks.

    disco-trl eval --model ./outputs/disco-1.5b --benchmarks aime24 aime25 math500 amc23 minerva olympiadbench
    disco-trl eval --model Qwen/Qwen2.5-Math-1.5B --benchmarks aime24 --num-samples 16 --output-dir eval/q15

    from disco_trl.eval import evaluate
    results = evaluate("./outputs/disco-1.5b", ["aime24", "math500"], num_samples=16)
    results = evaluate(model, ["aime24"], tokenizer=tokenizer, num_samples=2, max_new_tokens=64, limit=5)

For every problem, `num_samples` completions are sampled (temperature 0.6, top-p 0.95, up to 8,192 new tokens by
default: the paper's protocol) with vLLM when it is installed and a GPU is present, else with plain
`transformers` generation. Completion j of a problem is drawn with its own seed, a function of `seed`, the problem
and j only (`disco_trl.eval.generation.sample_seed`): a resumed or extended run (``--num-samples`` raised in an
existing folder) gives the samples a fresh run would. Each completion is graded with
`disco_trl.rewards.boxed_math_reward` (last ``\boxed{}`` after ``</think>``, math-verify equivalence). Reported per
benchmark: Pass@1 averaged over the samples (the paper's metric: the mean over problems of c/n, c correct out of n
samples) and pass@k from the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``; then their
average over benchmarks (the paper's "Avg."). Metrics: `metrics`; generation: `generation`;
the output folder and resuming: `records` (and `identity`, what the model is); the problems: `benchmarks`; the
command line: `cli`.

Output folder (when `output_dir` is given; the CLI defaults to ``eval_results/<model name>``):

* ``samples.jsonl``: one record per completion (benchmark, problem_id, sample, completion, answer, solution,
  reward, completion_tokens, finish_reason), appended as generation goes, so an interrupted run resumes where it
  stopped (run the same command again; a partial last line left by the interruption is dropped, with a warning)
  and a finished one can be inspected or re-graded;
* ``problems.jsonl``: one record per problem (benchmark, problem_id, problem, solution, prompt);
* ``results.json`` and ``results.md``: the metrics (JSON, and a Markdown table);
* ``config.json``: the generation settings and what the model is (`identity`: a folder's files, a Hub id, an
  in-memory model's weights); resuming with different settings, or into samples of another model (a folder
  retrained in place), is refused (use a new folder, or ``--overwrite``).

A run holds its output folder (`disco_trl.preflight.FolderLock`): a second evaluation into it is refused while it
runs. Damaged lines of ``samples.jsonl`` are dropped once, with one warning, and generated again.
"""

from .benchmarks import DEFAULT_BENCHMARKS
from .metrics import BENCHMARK_TITLES, format_markdown, pass_at_k, summarize
from .run import evaluate
from .scoring import metric_path, score_completions


__all__ = ["BENCHMARK_TITLES", "DEFAULT_BENCHMARKS", "evaluate", "format_markdown", "metric_path", "pass_at_k",
           "score_completions", "summarize"]
