"""Distribution shift: accuracy under corruptions (`robustness`) and unsupervised domain
adaptation to an unlabelled target folder (`adapt`: AdaBN, DANN)."""

from .adaptation import adapt
from .robust_eval import robustness

__all__ = ["adapt", "robustness"]
