"""The 11 KD baselines of the SQAKD paper (its Tables 7 and 12), each ``CE + lambda * L_distill``.

Importing this package registers ``fitnet, at, sp, cc, vid, rkd, ft, fsp, nst, crd, cktf`` in
`qdistill.distill.OBJECTIVES`.
"""

from qdistill.distill.baselines.base import FeatureBaseline
from qdistill.distill.baselines.contrastive import CKTF, CRD, ContrastiveHead
from qdistill.distill.baselines.hints import VID, FactorTransfer, FitNet
from qdistill.distill.baselines.maps import AT, FSP, NST, SP
from qdistill.distill.baselines.relations import CC, RKD

BASELINES = ("fitnet", "at", "sp", "cc", "vid", "rkd", "ft", "fsp", "nst", "crd", "cktf")

__all__ = [
    "AT",
    "BASELINES",
    "CC",
    "CKTF",
    "CRD",
    "FSP",
    "NST",
    "RKD",
    "SP",
    "VID",
    "ContrastiveHead",
    "FactorTransfer",
    "FeatureBaseline",
    "FitNet",
]
