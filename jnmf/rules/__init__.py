"""Update rules (layer 3): one file per rule, each an ``eqx.Module`` with init/step."""

from .au import AURNMF
from .base import NMFState, Rule, StepInfo
from .giqpm import GIQPM
from .mu import MURNMF

__all__ = ["AURNMF", "GIQPM", "MURNMF", "NMFState", "Rule", "StepInfo"]
