"""``jnmf.MiniBatchNMF``: a drop-in for ``sklearn.decomposition.MiniBatchNMF`` (a surface, layer 6).

The same constructor parameters, defaults and fitted attributes as scikit-learn 1.9's
``MiniBatchNMF``; ``fit`` / ``fit_transform`` / ``partial_fit`` / ``transform`` /
``inverse_transform`` / ``get_feature_names_out``.  scikit-learn is optional for jnmf:
this module needs it, ``import jnmf`` does not (``jnmf.MiniBatchNMF`` imports it on first use).

Numerics (jnmf's own, jitted JAX): the online
multiplicative updates for the beta-divergence of Lefèvre, Bach & Févotte (2011), as
scikit-learn documents them.  Per mini-batch ``X_b``:

* W_b: one multiplicative step (Févotte & Idier 2011, with exponent gamma(beta)), or
  with ``fresh_restarts`` (and always in ``partial_fit``) a fresh solve from a constant
  start of up to ``fresh_restarts_max_iter`` steps;
* H: the numerator and denominator of its multiplicative step are accumulated with
  forgetting, ``A <- rho A + H^(1/gamma) (.) W_b' (X_b (.) (W_b H)^(beta-2))``,
  ``B <- rho B + W_b' (W_b H)^(beta-1) + penalties``, ``H = (A / B)^gamma``, with
  ``rho = forget_factor ** (batch_size / n_samples)``;
* stopping, from the second step on: the relative change of H in one step (``tol``),
  or no new minimum of the exponentially weighted average of the batch cost in
  ``max_no_improvement`` steps.

Small values are handled as scikit-learn handles them, so that the iterates agree with
its to rounding: ``W H`` is floored at float32's eps where a negative power of it is
taken, only denominators that are exactly 0 become eps, W (beta < 1) and H (beta <= 1)
entries below float64's eps are set to 0 after each update, and for beta = 1 a
component with a zero column of W_b counts 1 in H's denominator (so a batch of zero
rows shrinks H, as scikit-learn's does, rather than leaving it unchanged).

Regularization is scikit-learn's (see :mod:`jnmf.estimator`), with the H terms
scaled to a batch (``alpha_H`` times the batch size).

Programs: for dense X (and ``verbose=0``) the whole fit is one compiled program
(``_fit_steps``): X is uploaded once, a ``lax.while_loop`` cuts the batches with
``dynamic_slice`` (a short last batch, with its own H penalties, through ``lax.cond``),
updates W in place and evaluates the stopping rule in the loop; the counts, tolerances,
forgetting and penalties are traced, so changing them does not compile again.  Sparse X
and ``verbose`` fits run a host loop instead, one compiled step per batch (sparse X taken
batch by batch, each batch made dense, ``batch_size x n_features``; verbose printing each
step's costs as scikit-learn does).
"""

from __future__ import annotations

import functools
import math
import numbers
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .compile_cache import guard_map_limit
from .data import dense_operator
from .estimator import (
    BETA_LOSSES,
    INITS,
    _check_init_factor,
    _compute_precision,
    beta_loss_value,
    check_int_param,
    check_real_param,
)
from .init import initialize

# The start as ONE compiled program, as jnmf.fit draws its starts: run op by op, the
# NNDSVD of a 20000 x 1000 matrix dispatched dozens of small programs (its transposes
# alone 1.9 s of a 4.4 s start, experiments/README.md "bench_minibatch.py").  XLA's
# default options, not jnmf.fit's cheaper-to-compile ones for its random draws: at that
# size the start's run time matters (0.42-0.69 s warm against 0.92-1.80 with those
# options and 0.74-2.33 op by op, 2026-12-05 02:50 UTC, load 3.7).
_initialize = jax.jit(initialize, static_argnums=(1, 2))

__all__ = ["MiniBatchNMF"]

_EPS = float(np.finfo(np.float32).eps)  # scikit-learn's floor of W H and of zero denominators
_ZERO = float(np.finfo(np.float64).eps)  # W (beta < 1) and H (beta <= 1) below this are set to 0


def _gamma(beta: float) -> float:
    """The exponent of the multiplicative step that makes it monotone (Févotte & Idier 2011)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def _floor(A, eps):
    """Entries below ``eps`` raised to ``eps`` (the others untouched)."""
    return jnp.where(A < eps, eps, A)


def _x_term(X, WH, beta: float, eps):
    """``X (.) WH^(beta-2)``, WH floored at eps when the power is negative (beta != 2)."""
    if beta < 2:
        WH = _floor(WH, eps)
    if beta == 1.0:
        return X / WH
    if beta == 0.0:
        return X * (1.0 / WH) ** 2
    return X * WH ** (beta - 2.0)


def _wh_term(WH, beta: float, eps):
    """``WH^(beta-1)``, WH floored at eps when the power is negative (beta not 1, 2)."""
    if beta < 1:
        WH = _floor(WH, eps)
    return WH ** (beta - 1.0)


def _safe_den(den, eps):
    """An exactly zero denominator becomes eps (scikit-learn's rule; small ones stay)."""
    return jnp.where(den == 0, eps, den)


def _w_update(X, W, H, l1, l2, eps, beta: float):
    """One multiplicative step of W (``batch x k``) for fixed H."""
    if beta == 2.0:
        num, den = X @ H.T, W @ (H @ H.T)
    else:
        WH = W @ H
        num = _x_term(X, WH, beta, eps) @ H.T
        if beta == 1.0:
            den = jnp.broadcast_to(jnp.sum(H, axis=1), W.shape)
        else:
            den = _wh_term(WH, beta, eps) @ H.T
    step = num / _safe_den(den + l1 + l2 * W, eps)
    g = _gamma(beta)
    return W * (step if g == 1.0 else step**g)


def _h_update(X, W, H, A, B, rho, l1, l2, eps, beta: float):
    """H from the forgetful accumulators: ``A <- rho A + num (.) H^(1/gamma)``,
    ``B <- rho B + den``, ``H = (A / B)^gamma``.  Returns ``(H, A, B)``."""
    if beta == 2.0:
        num, den = W.T @ X, (W.T @ W) @ H
    else:
        WH = W @ H
        num = W.T @ _x_term(X, WH, beta, eps)
        if beta == 1.0:
            # a component unused by the whole batch (column of W all 0) counts 1, not 0:
            # with 0 such a batch would leave H as it was.
            colsum = jnp.sum(W, axis=0)
            den = jnp.broadcast_to(jnp.where(colsum == 0, 1.0, colsum)[:, None], H.shape)
        else:
            den = W.T @ _wh_term(WH, beta, eps)
    den = _safe_den(den + l1 + l2 * H, eps)
    g = _gamma(beta)
    A = rho * A + num * (H if g == 1.0 else H ** (1.0 / g))
    B = rho * B + den
    Hn = A / B
    if g != 1.0:
        Hn = Hn**g
    if beta <= 1:
        Hn = jnp.where(Hn < _ZERO, 0.0, Hn)
    return Hn, A, B


@functools.partial(jax.jit, static_argnames=("beta",))
def _solve_w(X, H, W0, l1, l2, tol, max_iter, eps, *, beta: float):
    """W for fixed H: multiplicative steps from W0 until the relative change of W is at
    most ``tol`` (tol > 0) or ``max_iter`` steps (both traced: no recompilation)."""

    def cond(c):
        i, _, change = c
        return (i < max_iter) & ~((tol > 0) & (change <= tol))

    def body(c):
        i, W, _ = c
        Wn = _w_update(X, W, H, l1, l2, eps, beta)
        return i + 1, Wn, jnp.linalg.norm(Wn - W) / jnp.linalg.norm(Wn)

    _, W, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), W0, jnp.asarray(jnp.inf, W0.dtype)))
    return W


def _divergence(X, W, H, beta: float, eps):
    """The beta-divergence ``D_beta(X || WH)`` (half the squared distance for beta = 2),
    as scikit-learn counts it: entries with ``X <= eps`` left out of the X terms, WH
    floored at eps in them."""
    WH = W @ H
    if beta == 2.0:
        return 0.5 * jnp.sum((X - WH) ** 2)
    keep = X > eps
    Xk = jnp.where(keep, X, 1.0)
    WHk = jnp.where(keep, _floor(WH, eps), 1.0)

    def kept_sum(A):
        return jnp.sum(jnp.where(keep, A, 0.0))

    if beta == 1.0:
        return kept_sum(X * jnp.log(Xk / WHk)) + jnp.sum(W, axis=0) @ jnp.sum(H, axis=1) - kept_sum(X)
    if beta == 0.0:
        ratio = Xk / WHk
        return kept_sum(ratio) - X.size - kept_sum(jnp.log(ratio))
    res = kept_sum(Xk**beta) - beta * kept_sum(Xk * WHk ** (beta - 1.0)) + (beta - 1.0) * jnp.sum(WH**beta)
    return res / (beta * (beta - 1.0))


def _batch_step(X, W, H, A, B, rho, regs, solve_tol, solve_iter, eps, beta: float, solve: bool):
    """One mini-batch step: W_b (one step from W, or with ``solve`` a fresh solve from a
    constant start), the batch cost (per row), then H from the forgetful accumulators
    (Lefèvre et al. 2011).  Returns ``(W, H, A, B, cost, change)``, ``change`` the
    relative change of H (nan when the new H is 0)."""
    l1W, l2W, l1H, l2H = regs
    if solve:
        W0 = jnp.full(W.shape, jnp.sqrt(jnp.mean(X) / H.shape[0]), X.dtype)
        W = _solve_w(X, H, W0, l1W, l2W, solve_tol, solve_iter, eps, beta=beta)
    else:
        W = _w_update(X, W, H, l1W, l2W, eps, beta)
    if beta < 1:
        W = jnp.where(W < _ZERO, 0.0, W)
    cost = _divergence(X, W, H, beta, eps)
    cost = cost + l1W * jnp.sum(W) + l1H * jnp.sum(H) + l2W * jnp.sum(W * W) + l2H * jnp.sum(H * H)
    Hn, A, B = _h_update(X, W, H, A, B, rho, l1H, l2H, eps, beta)
    change = jnp.linalg.norm(Hn - H) / jnp.linalg.norm(Hn)
    return W, Hn, A, B, cost / X.shape[0], change


_minibatch_step = jax.jit(_batch_step, static_argnames=("beta", "solve"))


@functools.partial(jax.jit, static_argnames=("batch", "beta", "solve"))
def _fit_steps(
    X, W, H, rho, regs, regs_last, weights, total, tol, max_no_improvement, solve_tol, solve_iter, eps,
    *, batch: int, beta: float, solve: bool,
):  # fmt: skip
    """The whole mini-batch fit as one program: up to ``total`` steps over the rows of X
    in batches of ``batch`` (cycling; the last batch of a pass is shorter when ``batch``
    does not divide n_samples, with its own penalties ``regs_last``), stopped by
    scikit-learn's rule (see ``MiniBatchNMF._converged``) evaluated in the loop.

    Args:
        X: ``n_samples x n_features`` data, on the device.
        W, H: the start; ``A, B`` start at ``H`` and ones.
        rho: the forgetting of H's statistics per step.
        regs, regs_last: (l1_W, l2_W, l1_H, l2_H) for a full and for the last batch.
        weights: ``(a, 1 - a, a_last, 1 - a_last)``, the weights of a batch's cost in the
            smoothed cost (``a = rows / (n_samples + 1)``).
        total: the most steps; tol: the H change that stops (0: never);
        max_no_improvement: steps without a new minimum of the smoothed cost that stop.
        solve_tol, solve_iter, eps: as ``_batch_step``'s.
        batch, beta, solve: static (the batch rows, the beta-divergence, fresh W solves).

    Returns:
        ``(W, H, A, B, steps)``.  Every count, tolerance, penalty and weight is traced:
        changing one does not compile again.
    """
    n = X.shape[0]
    per_iter = -(-n // batch)
    last_rows = n - (per_iter - 1) * batch
    ragged = last_rows != batch

    def update(start, rows, regs, W, H, A, B):
        Xb = jax.lax.dynamic_slice_in_dim(X, start, rows, 0)
        Wb = jax.lax.dynamic_slice_in_dim(W, start, rows, 0)
        Wb, H, A, B, cost, change = _batch_step(
            Xb, Wb, H, A, B, rho, regs, solve_tol, solve_iter, eps, beta, solve
        )
        return jax.lax.dynamic_update_slice_in_dim(W, Wb, start, 0), H, A, B, cost, change

    def cond(c):
        return (c[0] < total) & ~c[-1]

    def body(c):
        step, W, H, A, B, ewa, ewa_min, no_improvement, _ = c
        j = step % per_iter
        if ragged:
            last = j == per_iter - 1
            W, H, A, B, cost, change = jax.lax.cond(
                last,
                lambda W, H, A, B: update(n - last_rows, last_rows, regs_last, W, H, A, B),
                lambda W, H, A, B: update(j * batch, batch, regs, W, H, A, B),
                W, H, A, B,
            )  # fmt: skip
            a, a1 = jnp.where(last, weights[2], weights[0]), jnp.where(last, weights[3], weights[1])
        else:
            W, H, A, B, cost, change = update(j * batch, batch, regs, W, H, A, B)
            a, a1 = weights[0], weights[1]
        step = step + 1
        # step 1 is not judged; step 2 starts the smoothed cost and its minimum
        first = step <= 2
        ewa = jnp.where(first, cost, ewa * a1 + cost * a)
        better = first | (ewa < ewa_min)
        ewa_min = jnp.where(better, ewa, ewa_min)
        no_improvement = jnp.where(better, 0, no_improvement + 1)
        judged = step >= 2
        stop = judged & (((tol > 0) & (change <= tol)) | (no_improvement >= max_no_improvement))
        return step, W, H, A, B, ewa, ewa_min, no_improvement, stop

    zero, count = jnp.zeros((), X.dtype), jnp.zeros((), jnp.int32)
    start = (count, W, H, H, jnp.ones_like(H), zero, zero, count, jnp.asarray(False))
    steps, W, H, A, B, *_ = jax.lax.while_loop(cond, body, start)
    return W, H, A, B, steps


@functools.partial(jax.jit, static_argnames=("beta",))
def _total_divergence(X, W, H, eps, *, beta: float):
    return _divergence(X, W, H, beta, eps)


class MiniBatchNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Mini-batch NMF, ``X ~ W H``, by online multiplicative updates (Lefèvre et al. 2011).

    A drop-in for ``sklearn.decomposition.MiniBatchNMF``: same parameters (and
    defaults), same attributes, same objective (the beta-divergence plus scikit-learn's
    elementwise L1/L2 penalties).  See the module docstring for the updates.

    Args:
        n_components: rank k; ``"auto"`` infers it from a custom init (else n_features);
            None means n_features.
        init: ``None``, ``"random"``, ``"nndsvd"``, ``"nndsvda"``, ``"nndsvdar"`` or
            ``"custom"`` (jnmf's initializers, :mod:`jnmf.init`).
        batch_size: rows per mini-batch.
        beta_loss: ``"frobenius"`` (2), ``"kullback-leibler"`` (1), ``"itakura-saito"`` (0)
            or a float.
        tol: stop once a step changes H by at most ``tol`` relative (0 disables).
        max_no_improvement: stop after this many steps without improvement of the
            smoothed batch cost (None disables).
        max_iter: the most passes over the data.
        alpha_W, alpha_H, l1_ratio: scikit-learn's regularization.
        forget_factor: the weight of past batches in H's statistics (0 forgets at once).
        fresh_restarts: solve each batch's W afresh (``fresh_restarts_max_iter`` steps).
        fresh_restarts_max_iter: steps of a fresh W solve.
        transform_max_iter: steps of ``transform``'s W solve (None: ``max_iter``).
        random_state: seed of the initialization.
        verbose: print progress.

    Attributes:
        components_, n_components_, n_iter_, n_steps_, reconstruction_err_,
        n_features_in_, feature_names_in_ (as scikit-learn's).
    """

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        batch_size=1024,
        beta_loss="frobenius",
        tol=1e-4,
        max_no_improvement=10,
        max_iter=200,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        forget_factor=0.7,
        fresh_restarts=False,
        fresh_restarts_max_iter=30,
        transform_max_iter=None,
        random_state=None,
        verbose=0,
    ):
        self.n_components = n_components
        self.init = init
        self.batch_size = batch_size
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.max_iter = max_iter
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.forget_factor = forget_factor
        self.fresh_restarts = fresh_restarts
        self.fresh_restarts_max_iter = fresh_restarts_max_iter
        self.transform_max_iter = transform_max_iter
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        """Every parameter checked on the host; ValueError naming it (before compiling)."""

        real = functools.partial(check_real_param, "MiniBatchNMF")
        integer = functools.partial(check_int_param, "MiniBatchNMF")

        n = self.n_components
        if not (n is None or (isinstance(n, str) and n == "auto")):
            integer("n_components", n, 1)
        if self.init is not None and self.init not in INITS:
            raise ValueError(
                f"The 'init' parameter of MiniBatchNMF must be None or one of {INITS}; got {self.init!r}"
            )
        integer("batch_size", self.batch_size, 1)
        if isinstance(self.beta_loss, str):
            if self.beta_loss not in BETA_LOSSES:
                raise ValueError(
                    f"The 'beta_loss' parameter of MiniBatchNMF must be a float or one of "
                    f"{tuple(BETA_LOSSES)}; got {self.beta_loss!r}"
                )
        else:
            real("beta_loss", self.beta_loss, low=-np.inf)
        real("tol", self.tol)
        integer("max_no_improvement", self.max_no_improvement, 1, none=True)
        integer("max_iter", self.max_iter, 1)
        real("alpha_W", self.alpha_W)
        if not (isinstance(self.alpha_H, str) and self.alpha_H == "same"):
            real("alpha_H", self.alpha_H)
        real("l1_ratio", self.l1_ratio, 0.0, 1.0)
        real("forget_factor", self.forget_factor, 0.0, 1.0)
        if not isinstance(self.fresh_restarts, bool | np.bool_):
            raise ValueError(
                f"The 'fresh_restarts' parameter of MiniBatchNMF must be a bool; got {self.fresh_restarts!r}"
            )
        integer("fresh_restarts_max_iter", self.fresh_restarts_max_iter, 1)
        integer("transform_max_iter", self.transform_max_iter, 1, none=True)
        if not isinstance(self.verbose, numbers.Integral | np.bool_):
            raise ValueError(
                f"The 'verbose' parameter of MiniBatchNMF must be an int or bool; got {self.verbose!r}"
            )

    def _regs(self, n_features: int, rows: int, dtype):
        """(l1_W, l2_W, l1_H, l2_H): scikit-learn's penalties, H's scaled to a batch of ``rows``."""
        a_W = float(self.alpha_W)
        a_H = a_W if isinstance(self.alpha_H, str) else float(self.alpha_H)
        r = float(self.l1_ratio)
        regs = (n_features * a_W * r, n_features * a_W * (1 - r), rows * a_H * r, rows * a_H * (1 - r))
        with _compute_precision(dtype):
            return tuple(jnp.asarray(v, dtype) for v in regs)

    def _check_data(self, X, beta: float):
        if (
            beta <= 0
            and (np.any(X.data == 0) if sp.issparse(X) else np.any(np.asarray(X) == 0))
            or (beta <= 0 and sp.issparse(X) and X.nnz < X.shape[0] * X.shape[1])
        ):
            raise ValueError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add small "
                "values to X, or use a positive beta_loss."
            )

    def _start(self, X, W, H, k):
        """(W, H, k) to start from: custom factors checked, or jnmf's initializer."""
        n_samples, n_features = X.shape
        if self.init == "custom":
            H = _check_init_factor(H, (k, n_features), "MiniBatchNMF (input H)")
            W = _check_init_factor(W, (n_samples, H.shape[0]), "MiniBatchNMF (input W)")
            if H.dtype != X.dtype or W.dtype != X.dtype:
                raise TypeError(
                    f"H and W should have the same dtype as X. Got H.dtype = {H.dtype} and "
                    f"W.dtype = {W.dtype}."
                )
            return np.array(W), np.array(H), H.shape[0]
        if W is not None or H is not None:
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set init='custom' to use them as "
                "initialization.",
                RuntimeWarning,
                stacklevel=3,
            )
        if k == "auto":
            k = n_features
        init = self.init
        if init is None:
            init = "nndsvda" if k <= min(n_samples, n_features) else "random"
        elif init != "random" and k > min(n_samples, n_features):
            raise ValueError(
                f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
            )
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
        if not np.any(Xd):
            return np.zeros((n_samples, k), X.dtype), np.zeros((k, n_features), X.dtype), k
        with _compute_precision(X.dtype):
            L0, R0 = _initialize(dense_operator(Xd), k, init, jax.random.key(seed))
        return np.array(L0, X.dtype), np.array(R0, X.dtype), k

    # ------------------------------------------------------------ fitting
    def _fit_transform(self, X, W=None, H=None):
        beta = beta_loss_value(self.beta_loss)
        self._check_data(X, beta)
        n_samples, n_features = X.shape
        k = n_features if self.n_components is None else self.n_components
        W, H, k = self._start(X, W, H, k)
        self._n_components = k
        dtype = X.dtype
        batch = min(int(self.batch_size), n_samples)
        self._batch_size = batch
        self._rho = float(self.forget_factor) ** (batch / n_samples)
        per_iter = math.ceil(n_samples / batch)
        total = int(self.max_iter) * per_iter
        tmax = self.max_iter if self.transform_max_iter is None else self.transform_max_iter
        t0 = time.perf_counter()
        with _compute_precision(dtype):
            eps = jnp.asarray(_EPS, dtype)
            rho = jnp.asarray(self._rho, dtype)
            solve_tol, solve_iter = jnp.asarray(self.tol, dtype), jnp.asarray(self.fresh_restarts_max_iter)
            args = (X, W, H, total, rho, solve_tol, solve_iter, eps, beta)
            if sp.issparse(X) or self.verbose:
                Hj, A, B, n_steps = self._host_steps(*args)
            else:
                W, Hj, A, B, n_steps = self._device_steps(*args)
            H = np.asarray(Hj, dtype)
            if self.fresh_restarts:
                W = self._solve_W(X, H, tmax)
        n_iter = math.ceil(n_steps / per_iter)
        if n_iter == self.max_iter and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to improve convergence.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if self.verbose:
            print(f"MiniBatchNMF: {n_steps} steps in {time.perf_counter() - t0:.2f} s")
        self._A, self._B = A, B
        return np.asarray(W, dtype), H, n_iter, n_steps

    def _host_steps(self, X, W, H, total, rho, solve_tol, solve_iter, eps, beta):
        """The steps on the host (sparse X, or verbose): one compiled step per batch, the
        stopping rule in Python (``_converged``, which prints when verbose).  Updates the
        NumPy W in place; returns ``(H, A, B, steps)``."""
        n_samples, n_features = X.shape
        dtype, batch = X.dtype, self._batch_size
        per_iter = math.ceil(n_samples / batch)
        Xc = X.tocsr() if sp.issparse(X) else X
        self._ewa_cost = self._ewa_cost_min = None
        self._no_improvement = 0
        Hj = jnp.asarray(H, dtype)
        A, B = Hj, jnp.ones_like(Hj)
        regs = {}  # by batch rows (the last batch may be shorter)
        for step in range(total):
            start = (step % per_iter) * batch
            Xb = Xc[start : start + batch]
            rows = Xb.shape[0]
            if rows not in regs:
                regs[rows] = self._regs(n_features, rows, dtype)
            Xb = jnp.asarray(Xb.toarray() if sp.issparse(Xb) else Xb, dtype)
            guard_map_limit()  # a new batch shape compiles a step
            Wb, Hj, A, B, cost, change = _minibatch_step(
                Xb, jnp.asarray(W[start : start + batch]), Hj, A, B, rho, regs[rows],
                solve_tol, solve_iter, eps, beta=beta, solve=bool(self.fresh_restarts),
            )  # fmt: skip
            W[start : start + batch] = np.asarray(Wb)
            cost, change = (float(v) for v in jax.device_get((cost, change)))
            if self._converged(step, total, rows, n_samples, cost, change):
                break
        return Hj, A, B, step + 1

    def _device_steps(self, X, W, H, total, rho, solve_tol, solve_iter, eps, beta):
        """The steps as one compiled program (dense X, not verbose): ``_fit_steps``, X
        uploaded once, the stopping rule in the loop.  Returns ``(W, H, A, B, steps)``."""
        n_samples, n_features = X.shape
        dtype, batch = X.dtype, self._batch_size
        last = n_samples - (math.ceil(n_samples / batch) - 1) * batch
        a, a_last = (min(rows / (n_samples + 1), 1.0) for rows in (batch, last))
        mni = np.iinfo(np.int32).max if self.max_no_improvement is None else self.max_no_improvement
        guard_map_limit()
        Wj, Hj, A, B, steps = _fit_steps(
            jnp.asarray(X, dtype), jnp.asarray(W, dtype), jnp.asarray(H, dtype), rho,
            self._regs(n_features, batch, dtype), self._regs(n_features, last, dtype),
            jnp.asarray((a, 1 - a, a_last, 1 - a_last), dtype), jnp.asarray(total, jnp.int32),
            jnp.asarray(self.tol, dtype), jnp.asarray(mni, jnp.int32),
            solve_tol, solve_iter, eps, batch=batch, beta=beta, solve=bool(self.fresh_restarts),
        )  # fmt: skip
        return np.asarray(Wj, dtype), Hj, A, B, int(steps)

    def _converged(
        self, step: int, total: int, rows: int, n_samples: int, cost: float, change: float
    ) -> bool:
        """scikit-learn's stopping rule after a step (``step`` counted from 0).

        The first step is not judged (its H change reflects the initialization).  Later
        steps update an exponentially weighted average of the per-row batch cost (weight
        ``rows / (n_samples + 1)``); the fit stops once H changed by at most ``tol``
        (relative, tol > 0), or once that average has not reached a new minimum in
        ``max_no_improvement`` consecutive steps.
        """
        step += 1
        if step == 1:
            if self.verbose:
                print(f"Minibatch step {step}/{total}: mean batch cost: {cost}")
            return False
        if self._ewa_cost is None:
            self._ewa_cost = cost
        else:
            alpha = min(rows / (n_samples + 1), 1.0)
            self._ewa_cost = self._ewa_cost * (1 - alpha) + cost * alpha
        if self.verbose:
            print(f"Minibatch step {step}/{total}: mean batch cost: {cost}, ewa cost: {self._ewa_cost}")
        if self.tol > 0 and change <= self.tol:
            if self.verbose:
                print(f"Converged (small H change) at step {step}/{total}")
            return True
        if self._ewa_cost_min is None or self._ewa_cost < self._ewa_cost_min:
            self._no_improvement, self._ewa_cost_min = 0, self._ewa_cost
        else:
            self._no_improvement += 1
        if self.max_no_improvement is not None and self._no_improvement >= self.max_no_improvement:
            if self.verbose:
                print(f"Converged (lack of improvement in objective function) at step {step}/{total}")
            return True
        return False

    def _solve_W(self, X, H, max_iter: int) -> np.ndarray:
        """W for fixed H (multiplicative steps from a constant start, ``tol`` relative)."""
        beta = beta_loss_value(self.beta_loss)
        dtype = X.dtype
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
        k = H.shape[0]
        n_samples, n_features = X.shape
        l1W, l2W, _, _ = self._regs(n_features, n_samples, dtype)
        with _compute_precision(dtype):
            avg = float(np.sqrt(max(Xd.mean(), 0.0) / k))
            W0 = jnp.full((n_samples, k), avg, dtype)
            guard_map_limit()
            W = _solve_w(
                jnp.asarray(Xd, dtype), jnp.asarray(H, dtype), W0, l1W, l2W,
                jnp.asarray(self.tol, dtype), jnp.asarray(int(max_iter)), jnp.asarray(_EPS, dtype), beta=beta,
            )  # fmt: skip
            return np.asarray(W, dtype)

    def _reconstruction_error(self, X, W, H) -> float:
        beta = beta_loss_value(self.beta_loss)
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
        guard_map_limit()
        with _compute_precision(X.dtype):
            d = float(
                _total_divergence(
                    jnp.asarray(Xd), jnp.asarray(W), jnp.asarray(H), jnp.asarray(_EPS, X.dtype), beta=beta
                )
            )
        return float(np.sqrt(2.0 * max(d, 0.0)))

    def _validate_X(self, X, reset: bool):
        return validate_data(
            self,
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            ensure_non_negative=True,
            reset=reset,
        )

    def fit_transform(self, X, y=None, W=None, H=None):
        """Fit the model to X and return the transformed data W.

        Args:
            X: ``n_samples x n_features`` non-negative data (array-like or scipy.sparse).
            y: ignored.
            W, H: starting factors when ``init="custom"``.

        Returns:
            W, ``n_samples x n_components``, in X's floating dtype.
        """
        self._validate_params()
        X = self._validate_X(X, reset=True)
        W, H, n_iter, n_steps = self._fit_transform(X, W=W, H=H)
        self.reconstruction_err_ = self._reconstruction_error(X, W, H)
        self.n_components_ = H.shape[0]
        self.components_ = H
        self.n_iter_ = n_iter
        self.n_steps_ = n_steps
        return W

    def fit(self, X, y=None, **params):
        """Fit the model to X (``params``: ``W``, ``H`` for ``init="custom"``).

        Returns:
            self.
        """
        self.fit_transform(X, **params)
        return self

    def partial_fit(self, X, y=None, W=None, H=None):
        """One mini-batch step on X (all of it one batch), starting the model if new.

        Args:
            X: a mini-batch, ``batch x n_features``.
            y: ignored.
            W, H: starting factors for ``init="custom"`` (first call only; W is checked
                but, as in scikit-learn, each batch's W is solved afresh from a constant start).

        Returns:
            self.
        """
        first = not hasattr(self, "components_")
        if first:
            self._validate_params()
        X = self._validate_X(X, reset=first)
        beta = beta_loss_value(self.beta_loss)
        self._check_data(X, beta)
        dtype = X.dtype
        n, n_features = X.shape
        if first:
            k = n_features if self.n_components is None else self.n_components
            _, H0, k = self._start(X, W, H, k)
            self._n_components = k
            self.components_ = H0
            self.n_components_ = k
            self.n_steps_ = 0
            # as scikit-learn: the batch size and forgetting are set by the first batch
            self._batch_size = min(int(self.batch_size), n)
            self._rho = float(self.forget_factor) ** (self._batch_size / n)
            with _compute_precision(dtype):
                self._A, self._B = jnp.asarray(H0, dtype), jnp.ones(H0.shape, dtype)
        H = np.asarray(self.components_, dtype)
        regs = self._regs(n_features, n, dtype)
        with _compute_precision(dtype):
            # W is solved afresh for each batch (a given W is checked, not used)
            guard_map_limit()
            _, Hn, A, B, _, _ = _minibatch_step(
                jnp.asarray(X.toarray() if sp.issparse(X) else X, dtype), jnp.zeros((n, H.shape[0]), dtype),
                jnp.asarray(H, dtype), jnp.asarray(self._A, dtype), jnp.asarray(self._B, dtype),
                jnp.asarray(self._rho, dtype), regs, jnp.asarray(self.tol, dtype),
                jnp.asarray(self.fresh_restarts_max_iter), jnp.asarray(_EPS, dtype),
                beta=beta, solve=True,
            )  # fmt: skip
        self._A, self._B = A, B
        self.components_ = np.asarray(Hn, dtype)
        self.n_steps_ += 1
        return self

    def transform(self, X):
        """W for new data X with ``components_`` fixed.

        Args:
            X: ``n_samples x n_features`` non-negative data.

        Returns:
            W, ``n_samples x n_components``, in X's floating dtype.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        tmax = self.max_iter if self.transform_max_iter is None else self.transform_max_iter
        return self._solve_W(X, self.components_.astype(X.dtype, copy=False), tmax)

    def inverse_transform(self, X):
        """The data back from W: ``X @ components_``.

        Args:
            X: W, ``n_samples x n_components``.

        Returns:
            ``n_samples x n_features``.
        """
        check_is_fitted(self)
        return X @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
