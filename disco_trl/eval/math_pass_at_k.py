r"""`math_pass_at_k`: math answer accuracy and unbiased Pass@k as a HuggingFace `evaluate` metric.

    import evaluate
    from disco_trl.eval import metric_path
    pass_at_k = evaluate.load(metric_path())

`evaluate.load` copies this file into its modules cache and imports it from there (no Hub access: it is a local
path), so everything it computes lives in the installed package: `disco_trl.eval.scoring.score_completions`, the
grading and the Pass@k of `disco-trl eval`. This file only declares the inputs and the description.
"""

import datasets
import evaluate

from disco_trl.eval.scoring import score_completions


_DESCRIPTION = r"""
Math answer accuracy and unbiased Pass@k, graded as `disco-trl eval` grades (disco-trl, the reference implementation
of DisCO, arXiv 2505.12366). Each completion's final answer is the last \boxed{} after </think>; it is compared with
the reference answer on the spot when the two are the same up to spelling or are plain numbers, else with
math-verify in bounded grader processes (a hard deadline per answer, DISCO_REWARD_TIMEOUT seconds, default 5; at most
DISCO_REWARD_WORKERS processes). Pass@1 is averaged over samples (the mean over problems of c/n, c correct of n
completions); pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over problems.
With one completion per problem, pass@1 is the accuracy.
"""

_KWARGS_DESCRIPTION = r"""
Args:
    predictions: one list of completions (strings) per problem; a flat list of strings is one completion per problem.
        Problems may have different numbers of completions.
    references: one reference answer (a string: "27", "\frac{1}{2}") per problem.
    k: an integer or a list of integers, the k of pass@k, each from 1 to the fewest completions of a problem
        (default: 1, 2, 4, ... up to that number, as `disco-trl eval`).
Returns:
    pass@1, and pass@k for each k; num_problems; samples_per_problem (an integer, or [fewest, most]);
    num_correct (the correct completions of each problem).
Examples:
    >>> pass_at_k = evaluate.load(disco_trl.eval.metric_path())
    >>> pass_at_k.compute(predictions=[[r"\boxed{4}", r"\boxed{5}"], [r"\boxed{\frac{1}{2}}", "no answer"]],
    ...                   references=["4", "0.5"], k=[1, 2])
    {'num_problems': 2, 'samples_per_problem': 2, 'num_correct': [1, 1], 'pass@1': 0.5, 'pass@2': 1.0}
"""

_CITATION = r"""
@article{chen2021codex,
  title={Evaluating Large Language Models Trained on Code},
  author={Chen, Mark and others},
  journal={arXiv preprint arXiv:2107.03374},
  year={2021}
}
@article{li2025disco,
  title={DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization},
  author={Li, Gang and Lin, Ming and Galanti, Tomer and Tu, Zhengzhong and Yang, Tianbao},
  journal={arXiv preprint arXiv:2505.12366},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MathPassAtK(evaluate.Metric):
    """Pass@1 (averaged over samples) and unbiased pass@k of math completions against reference answers."""

    def _info(self):
        several = datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                     "references": datasets.Value("string")})
        one = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=[several, one], reference_urls=["https://arxiv.org/abs/2107.03374",
                                                     "https://arxiv.org/abs/2505.12366"],
        )

    def _compute(self, predictions, references, k=None):
        if predictions and all(p is None or isinstance(p, str) for p in predictions):
            predictions = [[p] for p in predictions]  # a flat list: one completion per problem
        return score_completions(predictions, references, k=k)
