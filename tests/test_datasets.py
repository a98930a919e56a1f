"""The data shipped inside the package."""

import numpy as np

import jnmf


def test_orl_faces_loader():
    orl = jnmf.load_orl_faces()
    assert orl.faces.shape == (10304, 400) and orl.faces.dtype == np.uint8
    assert orl.image_shape == (112, 92)
    assert orl.subject.shape == (400,) and sorted(set(orl.subject.tolist())) == list(range(1, 41))
    assert np.all(np.bincount(orl.subject)[1:] == 10)
    # one image per column, pixels row-major: reshaped, neighbouring pixels are close
    # (a wrong pixel order would scramble the face)
    image = orl.faces[:, 0].reshape(orl.image_shape).astype(float)
    assert image.std() > 10
    assert np.abs(np.diff(image, axis=1)).mean() < image.std()


def test_golub_loader():
    g = jnmf.load_golub()
    assert g.expression.shape == (5000, 38)
    assert sorted(set(g.cell_type.tolist())) == ["ALL-B", "ALL-T", "AML"]
