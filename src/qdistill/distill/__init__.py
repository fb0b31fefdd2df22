"""Distillation: logit and feature losses, feature taps, teacher ensembles and training objectives.

Importing it registers every method in `OBJECTIVES`: sqakd, qat, ce_kd, squat, ekd, gor and the
11 KD baselines of the SQAKD paper.
"""

from qdistill.distill.baselines import BASELINES
from qdistill.distill.ensemble import TeacherEnsemble
from qdistill.distill.gor import GoR, LossBalance
from qdistill.distill.kd import kd_loss
from qdistill.distill.objectives import OBJECTIVES, Objective, build_objective, freeze
from qdistill.distill.squat import SQuaT, StudentAwareFeatureLoss, student_aware_target
from qdistill.distill.taps import FeatureTaps

__all__ = [
    "BASELINES",
    "OBJECTIVES",
    "FeatureTaps",
    "GoR",
    "LossBalance",
    "Objective",
    "SQuaT",
    "StudentAwareFeatureLoss",
    "TeacherEnsemble",
    "build_objective",
    "freeze",
    "kd_loss",
    "student_aware_target",
]
