"""Update rules (layer 3): one file per rule, each an ``eqx.Module`` with init/step."""

from .anls import ANLS
from .au import AURNMF
from .base import NMFState, Rule, StepInfo
from .giqpm import GIQPM
from .hals import HALS
from .kl import KLMU
from .mu import MURNMF
from .projected import ProjectedGradient

__all__ = [
    "ANLS",
    "AURNMF",
    "GIQPM",
    "HALS",
    "KLMU",
    "MURNMF",
    "NMFState",
    "ProjectedGradient",
    "Rule",
    "StepInfo",
]
