"""disco-trl: DisCO (Discriminative Constrained Optimization, arXiv:2505.12366) as a HuggingFace TRL trainer.

    from disco_trl import DiscoConfig, DiscoTrainer   # drop-in for GRPOConfig / GRPOTrainer
"""

from .config import DiscoConfig
from .losses import discriminative_objective, kl_hinge_penalty, sequence_scores
from .trainer import DiscoTrainer

__version__ = "0.1.0"
__all__ = ["DiscoConfig", "DiscoTrainer", "sequence_scores", "discriminative_objective", "kl_hinge_penalty"]
