"""``jnmf.MiniBatchNMF``: a drop-in for ``sklearn.decomposition.MiniBatchNMF`` (a surface, layer 6).

The same constructor parameters, defaults and fitted attributes as scikit-learn 1.9's
``MiniBatchNMF``; ``fit`` / ``fit_transform`` / ``partial_fit`` / ``transform`` /
``inverse_transform`` / ``get_feature_names_out``.  scikit-learn is optional for jnmf:
this module needs it, ``import jnmf`` does not (``jnmf.MiniBatchNMF`` imports it on first use).

Numerics (jnmf's own, jitted JAX, one compiled step per batch shape): the online
multiplicative updates for the beta-divergence of Lefèvre, Bach & Févotte (2011), as
scikit-learn documents them.  Per mini-batch ``X_b``:

* W_b: one multiplicative step (Févotte & Idier 2011, with exponent gamma(beta)), or
  with ``fresh_restarts`` a fresh solve from a constant start of up to
  ``fresh_restarts_max_iter`` steps;
* H: the numerator and denominator of its multiplicative step are accumulated with
  forgetting, ``A <- rho A + H^(1/gamma) (.) W_b' (X_b (.) (W_b H)^(beta-2))``,
  ``B <- rho B + W_b' (W_b H)^(beta-1) + penalties``, ``H = (A / B)^gamma``, with
  ``rho = forget_factor ** (batch_size / n_samples)``;
* stopping: the relative change of H (``tol``) or no improvement of the exponentially
  weighted average of the batch cost in ``max_no_improvement`` steps.

Regularization is scikit-learn's (see :mod:`jnmf.estimator`), with the H terms
scaled to a batch (``alpha_H`` times the batch size).  Sparse X is taken batch by
batch; each batch is made dense (``batch_size x n_features``) for the update.
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

__all__ = ["MiniBatchNMF"]

_EPS = float(np.finfo(np.float32).eps)  # the floor of W H and of the denominators (data units)


def _gamma(beta: float) -> float:
    """The exponent of the multiplicative step that makes it monotone (Févotte & Idier 2011)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


def _ratio_terms(X, W, H, beta: float, eps):
    """``(X (.) WH^(beta-2), WH^(beta-1))`` with WH floored (the two halves of the gradient)."""
    WH = jnp.maximum(W @ H, eps)
    if beta == 2.0:
        return X, WH
    if beta == 1.0:
        return X / WH, jnp.ones_like(WH)
    return X * WH ** (beta - 2.0), WH ** (beta - 1.0)


def _w_update(X, W, H, l1, l2, eps, beta: float):
    """One multiplicative step of W (``batch x k``) for fixed H."""
    if beta == 2.0:
        num, den = X @ H.T, W @ (H @ H.T)
    else:
        P, Q = _ratio_terms(X, W, H, beta, eps)
        num, den = P @ H.T, Q @ H.T
    den = jnp.maximum(den + l1 + l2 * W, eps)
    g = _gamma(beta)
    step = num / den
    return W * (step if g == 1.0 else step**g)


@functools.partial(jax.jit, static_argnames=("beta",))
def _solve_w(X, H, W0, l1, l2, tol, max_iter, eps, *, beta: float):
    """W for fixed H: multiplicative steps from W0 until the relative change of W is at
    most ``tol`` or ``max_iter`` steps (both traced: no recompilation)."""

    def cond(c):
        i, _, change = c
        return (i < max_iter) & (change > tol)

    def body(c):
        i, W, _ = c
        Wn = _w_update(X, W, H, l1, l2, eps, beta)
        change = jnp.linalg.norm(Wn - W) / jnp.maximum(jnp.linalg.norm(Wn), jnp.finfo(W.dtype).tiny)
        return i + 1, Wn, change

    _, W, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), W0, jnp.asarray(jnp.inf, W0.dtype)))
    return W


def _divergence(X, WH, beta: float, eps):
    """The beta-divergence ``D_beta(X || WH)`` (half the squared distance for beta = 2)."""
    if beta == 2.0:
        return 0.5 * jnp.sum((X - WH) ** 2)
    WH = jnp.maximum(WH, eps)
    if beta == 1.0:
        xlog = jnp.where(X > 0, X * jnp.log(jnp.where(X > 0, X, 1.0) / WH), 0.0)
        return jnp.sum(xlog - X + WH)
    if beta == 0.0:
        Xs = jnp.maximum(X, eps)
        return jnp.sum(Xs / WH - jnp.log(Xs / WH) - 1.0)
    return jnp.sum(X**beta + (beta - 1.0) * WH**beta - beta * X * WH ** (beta - 1.0)) / (beta * (beta - 1.0))


def _penalty(W, l1, l2):
    return l1 * jnp.sum(W) + 0.5 * l2 * jnp.sum(W * W)


@functools.partial(jax.jit, static_argnames=("beta", "fresh"))
def _minibatch_step(X, W, H, A, B, rho, regs, fresh_tol, fresh_iter, eps, *, beta: float, fresh: bool):
    """One mini-batch step: W_b (one step or a fresh solve), the batch cost, then H from
    the forgetful accumulators (Lefèvre et al. 2011).  Returns ``(W, H, A, B, cost)``."""
    l1W, l2W, l1H, l2H = regs
    if fresh:
        W0 = jnp.full_like(W, jnp.sqrt(jnp.mean(X) / H.shape[0]))
        W = _solve_w(X, H, W0, l1W, l2W, fresh_tol, fresh_iter, eps, beta=beta)
    else:
        W = _w_update(X, W, H, l1W, l2W, eps, beta)
    cost = _divergence(X, W @ H, beta, eps) + _penalty(W, l1W, l2W) + _penalty(H, l1H, l2H)
    if beta == 2.0:
        num, den = W.T @ X, (W.T @ W) @ H
    else:
        P, Q = _ratio_terms(X, W, H, beta, eps)
        num, den = W.T @ P, W.T @ Q
    den = jnp.maximum(den + l1H + l2H * H, eps)
    g = _gamma(beta)
    Hg = H if g == 1.0 else H ** (1.0 / g)
    A = rho * A + num * Hg
    B = rho * B + den
    Hn = A / B
    Hn = Hn if g == 1.0 else Hn**g
    return W, Hn, A, B, cost


@functools.partial(jax.jit, static_argnames=("beta",))
def _total_divergence(X, W, H, eps, *, beta: float):
    return _divergence(X, W @ H, beta, eps)


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

    def _regs(self, n_samples: int, n_features: int, batch: int, dtype):
        """(l1_W, l2_W, l1_H, l2_H): scikit-learn's penalties, H's scaled to one batch."""
        a_W = float(self.alpha_W)
        a_H = a_W if isinstance(self.alpha_H, str) else float(self.alpha_H)
        r = float(self.l1_ratio)
        regs = (n_features * a_W * r, n_features * a_W * (1 - r), batch * a_H * r, batch * a_H * (1 - r))
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
            L0, R0 = initialize(dense_operator(Xd), k, init, jax.random.key(seed))
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
        rho = float(self.forget_factor) ** (batch / n_samples)
        per_iter = math.ceil(n_samples / batch)
        regs = self._regs(n_samples, n_features, batch, dtype)
        tmax = self.max_iter if self.transform_max_iter is None else self.transform_max_iter
        Xc = X.tocsr() if sp.issparse(X) else X
        ewa = ewa_min = None
        no_improve = n_steps = 0
        alpha_ewa = min(batch / (n_samples + 1), 1.0)
        t0 = time.perf_counter()
        with _compute_precision(dtype):
            eps = jnp.asarray(_EPS, dtype)
            Hj = jnp.asarray(H, dtype)
            A, B = Hj, jnp.ones_like(Hj)
            fresh = bool(self.fresh_restarts)
            ftol, fiter = jnp.asarray(self.tol, dtype), jnp.asarray(self.fresh_restarts_max_iter)
            stop = False
            for _ in range(int(self.max_iter)):
                for start in range(0, n_samples, batch):
                    Xb = Xc[start : start + batch]
                    Xb = jnp.asarray(Xb.toarray() if sp.issparse(Xb) else Xb, dtype)
                    Wb, Hn, A, B, cost = _minibatch_step(
                        Xb, jnp.asarray(W[start : start + batch]), Hj, A, B, jnp.asarray(rho, dtype),
                        regs, ftol, fiter, eps, beta=beta, fresh=fresh,
                    )  # fmt: skip
                    W[start : start + batch] = np.asarray(Wb)
                    n_steps += 1
                    cost = float(cost) / Xb.shape[0]
                    change = float(
                        jnp.linalg.norm(Hn - Hj) / jnp.maximum(jnp.linalg.norm(Hn), jnp.finfo(dtype).tiny)
                    )
                    Hj = Hn
                    ewa = cost if ewa is None else ewa * (1 - alpha_ewa) + cost * alpha_ewa
                    if self.verbose:
                        print(
                            f"Minibatch step {n_steps}/{self.max_iter * per_iter}: mean batch cost: {ewa}",
                            flush=True,
                        )
                    if self.tol > 0 and change <= self.tol:
                        if self.verbose:
                            print(f"Converged (small H change) at step {n_steps}/{self.max_iter * per_iter}")
                        stop = True
                        break
                    if ewa_min is None or ewa < ewa_min:
                        ewa_min, no_improve = ewa, 0
                    else:
                        no_improve += 1
                    if self.max_no_improvement is not None and no_improve >= self.max_no_improvement:
                        if self.verbose:
                            print(f"Converged (lack of improvement in objective) at step {n_steps}")
                        stop = True
                        break
                if stop:
                    break
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

    def _solve_W(self, X, H, max_iter: int) -> np.ndarray:
        """W for fixed H (multiplicative steps from a constant start, ``tol`` relative)."""
        beta = beta_loss_value(self.beta_loss)
        dtype = X.dtype
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
        k = H.shape[0]
        n_samples, n_features = X.shape
        l1W, l2W, _, _ = self._regs(n_samples, n_features, 1, dtype)
        with _compute_precision(dtype):
            avg = float(np.sqrt(max(Xd.mean(), 0.0) / k))
            W0 = jnp.full((n_samples, k), avg, dtype)
            W = _solve_w(
                jnp.asarray(Xd, dtype), jnp.asarray(H, dtype), W0, l1W, l2W,
                jnp.asarray(self.tol, dtype), jnp.asarray(int(max_iter)), jnp.asarray(_EPS, dtype), beta=beta,
            )  # fmt: skip
            return np.asarray(W, dtype)

    def _reconstruction_error(self, X, W, H) -> float:
        beta = beta_loss_value(self.beta_loss)
        Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
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
            W, H: starting factors for ``init="custom"`` (first call only for H).

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
            W0, H0, k = self._start(X, W, H, k)
            self._n_components = k
            self.components_ = H0
            self.n_components_ = k
            self.n_steps_ = 0
            with _compute_precision(dtype):
                self._A, self._B = jnp.asarray(H0, dtype), jnp.ones(H0.shape, dtype)
        H = np.asarray(self.components_, dtype)
        Wb = self._solve_W(X, H, self.fresh_restarts_max_iter)  # W is a start for the first H only
        rho = float(self.forget_factor) ** (n / max(n, 1))
        regs = self._regs(n, n_features, n, dtype)
        with _compute_precision(dtype):
            _, Hn, A, B, _ = _minibatch_step(
                jnp.asarray(X.toarray() if sp.issparse(X) else X, dtype), jnp.asarray(Wb, dtype),
                jnp.asarray(H, dtype), jnp.asarray(self._A, dtype), jnp.asarray(self._B, dtype),
                jnp.asarray(rho, dtype), regs, jnp.asarray(self.tol, dtype),
                jnp.asarray(self.fresh_restarts_max_iter), jnp.asarray(_EPS, dtype),
                beta=beta, fresh=bool(self.fresh_restarts),
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
