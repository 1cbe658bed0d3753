"""disco-trl: DisCO (Discriminative Constrained Optimization, arXiv:2505.12366) as a HuggingFace TRL trainer.

    from disco_trl import DiscoConfig, DiscoTrainer   # drop-in for GRPOConfig / GRPOTrainer

The objective's pure functions are in `disco_trl.losses`; math data, rewards and evaluation in `disco_trl.data`,
`disco_trl.rewards` and `disco_trl.eval`; the CPU demo, comparison and study in `disco_trl.demo`.
"""

from .config import DiscoConfig
from .losses import discriminative_objective, kl_hinge_penalty, sequence_scores, token_mean_kl
from .trainer import DiscoTrainer


__version__ = "0.1.0"
__all__ = ["DiscoConfig", "DiscoTrainer", "sequence_scores", "discriminative_objective", "token_mean_kl",
           "kl_hinge_penalty"]
