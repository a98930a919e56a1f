"""Tune a penalty of eq. 3 (Pav 2024) by gradient descent on a held-out loss.

The columns of Y are split into training and validation columns (bi-cross-validation
in the spirit of Owen & Perry 2009).  For an L1 penalty ``lambda = lambda_1L = lambda_1R``
(with a small fixed ridge) the training columns are fitted (:func:`jnmf.differentiable_fit`,
warm started at the previous step's factors, so the descent follows one continuous
path of local solutions).  Each validation column gets its coefficients by
non-negative least squares on the first half of the rows, and the loss is measured
on the other half:

    v(lambda) = 1/2 ||Y_va,b - L_b(lambda) X||^2 / ||Y_va,b||^2,   X = argmin_{X >= 0} ||Y_va,a - L_a X||.

Its derivative needs dL/dlambda, which jnmf gives by implicit differentiation at the
fit's fixed point (Blondel et al. 2022; see jnmf.implicit), and dX/dL, which
:func:`projection` gets the same way in closed form: on the NNLS support the KKT
conditions are the normal equations, solved differentiably.

Why the L1 weight and not the ridge alone: with a ridge on both factors and no other
penalty, eq. 3 is invariant under rotations ``(L Q, Q' R)`` that keep the factors'
zero patterns, which dense factors always allow, so the fitted L is not locally
unique and dL/dlambda does not exist (jnmf.implicit, "the gauge symmetry").  L1
terms make the factors sparse and break the rotations.

The descent runs on ``log lambda`` with Adam (optax), printing lambda and the
validation loss per step; at the end a grid of lambda values (one ``vmap`` call)
shows where the minimum lies.  Run: ``python experiments/tune_penalty_by_gradient.py``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # a plain checkout

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jnmf  # noqa: E402
from jnmf.nnls import nnls_gram  # noqa: E402

M, N_TRAIN, N_VALID, TRUE_RANK, RANK, NOISE = 50, 60, 40, 4, 10, 0.3
STEPS, LEARNING_RATE, RIDGE = 30, 0.2, 0.1


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative rank-4 data plus noise, split into training and validation columns."""
    rng = np.random.default_rng(seed)
    L = rng.random((M, TRUE_RANK)) * (rng.random((M, TRUE_RANK)) > 0.5)
    R = rng.random((TRUE_RANK, N_TRAIN + N_VALID))
    Y = L @ R + NOISE * rng.random((M, N_TRAIN + N_VALID))
    return Y[:, :N_TRAIN], Y[:, N_TRAIN:]


def projection(A: jax.Array, Y: jax.Array) -> jax.Array:
    """X = argmin_{X >= 0} ||Y - A X||, differentiable in A: the support F of each column is
    found by NNLS (no derivative), then ``X_F = (A_F' A_F)^{-1} A_F' y`` is recomputed by a
    linear solve that autodiff differentiates (the KKT system on the support, exact
    under strict complementarity, as in jnmf.implicit)."""
    k = A.shape[1]
    # a tiny ridge keeps the system regular if the fit has collapsed to L = 0
    Q, B = A.T @ A + 1e-12 * jnp.eye(k, dtype=A.dtype), A.T @ Y
    X = jax.lax.stop_gradient(nnls_gram(Q, -B.T).T)

    def column(on, b):
        both = on[:, None] & on[None, :]
        Qf = jnp.where(both, Q, jnp.eye(k, dtype=Q.dtype))
        return jnp.linalg.solve(Qf, jnp.where(on, b, 0.0))

    return jax.vmap(column, in_axes=(1, 1), out_axes=1)(X > 0, B)


def validation_loss(L: jax.Array, Y_valid: jax.Array) -> jax.Array:
    """Held-out loss of the validation columns: their coefficients X are fitted on the first
    half of the rows, and the loss is measured on the other half (relative to its norm)."""
    top, bottom = slice(0, M // 2), slice(M // 2, M)
    X = projection(L[top], Y_valid[top])
    E = Y_valid[bottom] - L[bottom] @ X
    return 0.5 * jnp.sum(E * E) / jnp.sum(Y_valid[bottom] ** 2)


def main() -> None:
    Y_train, Y_valid = (jnp.asarray(y) for y in make_data())
    rng = np.random.default_rng(1)
    L0 = jnp.asarray(rng.random((M, RANK)))
    R0 = jnp.asarray(rng.random((RANK, N_TRAIN)))

    def objective(log_lam, L_start, R_start):
        lam = jnp.exp(log_lam)
        L, R = jnmf.differentiable_fit(
            Y_train,
            L_start,
            R_start,
            method="hals",
            lambda_1L=lam,
            lambda_1R=lam,
            lambda_2L=RIDGE,
            lambda_2R=RIDGE,
            max_iterations=20_000,
        )
        return validation_loss(L, Y_valid), (L, R)

    step_value_grad = jax.jit(jax.value_and_grad(objective, has_aux=True))
    optimizer = optax.adam(LEARNING_RATE)
    log_lam = jnp.log(jnp.asarray(0.5))
    opt_state = optimizer.init(log_lam)
    L, R = L0, R0
    print(f"{'step':>4} {'lambda_1':>10} {'validation loss':>16} {'d loss / d log lambda':>22}")
    for step in range(STEPS):
        (loss, (L, R)), grad = step_value_grad(log_lam, L, R)
        print(f"{step:4d} {float(jnp.exp(log_lam)):10.4g} {float(loss):16.6g} {float(grad):22.3e}")
        update, opt_state = optimizer.update(grad, opt_state)
        log_lam = optax.apply_updates(log_lam, update)

    # For comparison: the validation loss over a grid, all in one vmap call (cold starts).
    grid = jnp.logspace(-2, 0, 9)
    losses = jax.jit(jax.vmap(lambda lam: objective(jnp.log(lam), L0, R0)[0]))(grid)
    print("\ngrid (cold starts):")
    for lam, loss in zip(grid, losses, strict=True):
        print(f"     {float(lam):10.4g} {float(loss):16.6g}")


if __name__ == "__main__":
    main()
