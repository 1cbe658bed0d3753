r"""Math datasets in the shape DisCO / GRPO trainers expect: a `prompt` column and a `solution` column.

    from disco_trl.data import load_math_dataset
    train = load_math_dataset("deepscaler")                         # agentica-org/DeepScaleR-Preview-Dataset
    train = load_math_dataset("dapo-math-17k")                      # BytedTsinghua-SIA/DAPO-Math-17k, de-duplicated
    test = load_math_dataset("aime24", conversational=False)        # local benchmark file when present, else the hub
    mine = load_math_dataset("data/my_problems.jsonl", question_field="q", answer_field="a")

Every source is turned into

* `prompt`: the paper's prompt, ``"{problem} Let's think step by step and output the final answer within \boxed{}."``,
  as a one-message chat (``[{"role": "user", "content": ...}]``, optionally after a system message: the
  `system_prompt` argument, or the turns a chat dataset has before its last user message) or, with
  ``conversational=False``, as a plain string;
* `solution`: the reference final answer as a string (what `disco_trl.rewards.boxed_math_reward` compares against);
* `problem`: the problem text alone (kept for evaluation records).

The sources name their fields differently (see `SOURCES`): DeepScaleR, MATH-500 and AIME use problem/answer,
AMC 2023 stores the answer as a float, Minerva has no answer field (the answer is the last ``\boxed{}`` of its
solution, as in MATH), OlympiadBench uses question/final_answer (a list), and DAPO-Math-17k stores a chat prompt
wrapped in its own instructions with the answer under ``reward_model.ground_truth``. Unknown hub datasets and local
files are read by looking for the usual field names; when none is found the error names the missing field, the
columns that exist, and the argument that fixes it (`question_field=` / `answer_field=`). A local folder is read
too: one saved with ``save_to_disk``, or a folder of data files (`files`).
"""

from .answers import normalize_answer
from .loader import PROMPT_TEMPLATE, format_prompt, load_math_dataset
from .sources import BENCHMARK_FILES, BENCHMARKS, SOURCES, SourceSpec, benchmark_dir, canonical_source


__all__ = [
    "PROMPT_TEMPLATE",
    "SOURCES",
    "BENCHMARKS",
    "BENCHMARK_FILES",
    "SourceSpec",
    "benchmark_dir",
    "canonical_source",
    "format_prompt",
    "load_math_dataset",
    "normalize_answer",
]
