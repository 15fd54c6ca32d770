"""`leanvision optimize`: search pruning, distillation and INT8 pipelines for the fastest model
that meets accuracy, latency and size constraints on this machine (see api.py)."""

from .api import optimize
from .constraints import Candidate, Constraints, choose, pareto_front
from .space import Budget, Pipeline, SearchSpace

__all__ = ["Budget", "Candidate", "Constraints", "Pipeline", "SearchSpace", "choose",
           "optimize", "pareto_front"]
