"""Built-in data: the Golub et al. (1999) ALL/AML leukaemia expression matrix.

5000 genes x 38 bone-marrow samples (19 ALL-B, 8 ALL-T, 11 AML), the classic
data of NMF rank selection (Brunet et al. 2004).  Shipped inside the package.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

import numpy as np


class Golub(NamedTuple):
    expression: np.ndarray  # genes x samples, float64, strictly positive
    sample: np.ndarray
    cell_type: np.ndarray  # "ALL-B", "ALL-T" or "AML" per sample
    gene: np.ndarray


def load_golub() -> Golub:
    """The Golub ALL/AML matrix (5000 x 38) and its labels."""
    with resources.files("jnmf").joinpath("data/golub_all_aml.npz").open("rb") as fh:
        d = np.load(fh)
        return Golub(d["expression"], d["sample"], d["cell_type"], d["gene"])
