"""Built-in data, shipped inside the package.

* The Golub et al. (1999) ALL/AML leukaemia expression matrix: 5000 genes x 38
  bone-marrow samples (19 ALL-B, 8 ALL-T, 11 AML), the classic data of NMF rank
  selection (Brunet et al. 2004).
* The ORL (Olivetti) face database of AT&T Laboratories Cambridge (Samaria & Harter
  1994): 400 grey-scale images of 112 x 92 pixels, 10 each of 40 people, the classic
  data of parts-based NMF.  AT&T distributed it freely for research; please cite
  F. Samaria and A. Harter, "Parameterisation of a stochastic model for human face
  identification", 2nd IEEE Workshop on Applications of Computer Vision, 1994.
  Stored as uint8, compressed (3.7 MB).
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
    """The Golub ALL/AML matrix and its labels.

    Returns:
        A :class:`Golub`: ``expression`` (5000 genes x 38 samples), ``sample`` names,
        ``cell_type`` ("ALL-B", "ALL-T" or "AML") and ``gene`` names.
    """
    with resources.files("jnmf").joinpath("data/golub_all_aml.npz").open("rb") as fh:
        d = np.load(fh)
        return Golub(d["expression"], d["sample"], d["cell_type"], d["gene"])


class OrlFaces(NamedTuple):
    faces: np.ndarray  # pixels x images (10304 x 400), uint8; column j is image j, row-major
    image_shape: tuple[int, int]  # (112, 92): faces[:, j].reshape(image_shape) is image j
    subject: np.ndarray  # the person (1..40) in each image


def load_orl_faces() -> OrlFaces:
    """The ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994).

    Returns:
        An :class:`OrlFaces`: ``faces``, the ``10304 x 400`` uint8 matrix with one
        image per column (pixels in row-major order; divide by 255 for values in
        [0, 1]), ``image_shape`` ``(112, 92)`` and ``subject``, the person (1-40)
        shown in each image (10 images each).
    """
    with resources.files("jnmf").joinpath("data/orl_faces.npz").open("rb") as fh:
        d = np.load(fh)
        images, subject = d["images"], d["subject"]
    shape = (int(images.shape[1]), int(images.shape[2]))
    return OrlFaces(np.ascontiguousarray(images.reshape(images.shape[0], -1).T), shape, subject)
