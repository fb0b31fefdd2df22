"""Distillation: logit and feature losses, feature taps and training objectives."""

from qdistill.distill.kd import kd_loss
from qdistill.distill.objectives import OBJECTIVES, Objective, build_objective, freeze
from qdistill.distill.taps import FeatureTaps

__all__ = ["OBJECTIVES", "FeatureTaps", "Objective", "build_objective", "freeze", "kd_loss"]
