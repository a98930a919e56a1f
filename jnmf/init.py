"""Starting factors for NMF: random, sparse random and NNDSVD (Boutsidis & Gallopoulos 2008).

Every initializer is a pure JAX function ``f(Y, rank, key) -> (L, R)`` with ``L`` of
shape ``m x rank`` and ``R`` of shape ``rank x n`` (``Y ~ L R``), in Y's floating dtype.
``rank`` fixes shapes, so it must be static under ``jit``
(``jax.jit(f, static_argnums=1)``); everything else may be traced.  The NNDSVD family
ignores ``key`` except ``nndsvdar``.

* :func:`random_init`: ``sqrt(mean(Y) / rank) |z|`` with z standard normal (the scale
  of scikit-learn's "random"): strictly positive almost surely, and
  ``E[(LR)_ij] = (2 / pi) mean(Y)``.
* :func:`sparse_random_init`: the same with a given fraction of exact zeros in each
  factor (the sparse starting iterates of Pav 2024, Figure 2).
* :func:`uniform_init`: every entry uniform on ``(0, max(Y)]``, R's NMF package's
  "random" seeding (``nmf(x, k, seed=123456)``); the default of :func:`jnmf.consensus`.
* :func:`nndsvd`, :func:`nndsvda`, :func:`nndsvdar`: non-negative double SVD, with the
  zeros kept, replaced by ``mean(Y)``, or replaced by ``mean(Y)/100 u``, u uniform on (0, 1].
* :func:`initialize`: dispatch on a name, or validate a user ``(L, R)`` pair.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .data import DataOperator, DenseData, TransposedDense

Factors = tuple[Float[Array, "m k"], Float[Array, "k n"]]


def _as_data(Y) -> Array | DataOperator:
    """Y as an array, or the data operator itself (random starts need only its shape,
    mean and maximum)."""
    if isinstance(Y, DataOperator):
        return Y
    Y = jnp.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-d matrix, got shape {Y.shape}")
    if not jnp.issubdtype(Y.dtype, jnp.floating):
        Y = Y.astype(jnp.result_type(float))
    return Y


def _check_rank(rank, limit: int | None = None) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(f"rank must be a positive int (static under jit), got {rank!r}")
    if limit is not None and rank > limit:
        raise ValueError(f"rank must be at most min(m, n) = {limit} for NNDSVD, got {rank}")
    return int(rank)


def _mean(Y) -> Array:
    return Y.mean() if isinstance(Y, DataOperator) else jnp.mean(Y)


def _max(Y) -> Array:
    return Y.maximum() if isinstance(Y, DataOperator) else jnp.max(Y)


# Dense data up to this many entries, or with min(m, n) at most EXACT_SVD_WIDTHS times the
# randomized method's width, get the exact SVD; larger dense data the randomized one.
# XLA:CPU's full SVD of an m x n matrix costs O(m n min(m, n)) and took 6 s of CPU at
# 2000 x 1000 and 31 s at 5000 x 2000 (2026-12-04, jax 0.10.2, 2-core EPYC under load),
# while NNDSVD needs only the rank leading triplets; the randomized range finder is ~10
# products with Y (scikit-learn's NNDSVD is randomized at every size).
EXACT_SVD_ENTRIES = 1 << 16
EXACT_SVD_WIDTHS = 4
POWER_ITERATIONS = 4
OVERSAMPLING = 10


def _exact_svd_pays(shape: tuple[int, int], rank: int) -> bool:
    """Whether the rank leading singular triplets of a dense ``shape`` matrix come from its
    full SVD (small or nearly square-in-rank data) rather than the randomized range finder."""
    m, n = shape
    width = min(rank + OVERSAMPLING, m, n)
    return m * n <= EXACT_SVD_ENTRIES or min(m, n) <= EXACT_SVD_WIDTHS * width


def _svd(Y, rank: int):
    """The ``rank`` leading singular triplets ``(U, S, V')`` of Y.

    Small dense data (:func:`_exact_svd_pays`): the full SVD.  Otherwise (larger dense
    data, sparse data) a randomized range finder with ``POWER_ITERATIONS`` (4) power
    iterations and ``OVERSAMPLING`` (10) extra columns (Halko, Martinsson & Tropp 2011,
    Algorithms 4.4 and 5.1), using only products with Y, so no ``m x n`` work beyond them
    and no ``m x n`` array besides Y.  Its key is fixed: the result is deterministic.
    """
    if isinstance(Y, DataOperator):
        if isinstance(Y, DenseData | TransposedDense) and _exact_svd_pays(Y.shape, rank):
            return _svd(Y.dense(), rank)
        times_Y, times_Yt = Y.product_R, Y.product_L  # A -> A Y (A: w x m); B -> B Y' (B: w x n)
    else:
        if _exact_svd_pays(Y.shape, rank):
            U, S, Vt = jnp.linalg.svd(Y, full_matrices=False)
            return U[:, :rank], S[:rank], Vt[:rank]
        times_Y, times_Yt = (lambda A: A @ Y), (lambda B: B @ Y.T)
    m, n = Y.shape
    width = min(rank + OVERSAMPLING, m, n)
    Omega = jax.random.normal(jax.random.key(0), (width, m), Y.dtype)  # factor-major test matrix
    Q = jnp.linalg.qr(times_Y(Omega).T)[0]  # n x width: range of Y'
    for _ in range(POWER_ITERATIONS):
        Q = jnp.linalg.qr(times_Yt(Q.T).T)[0]  # m x width: range of Y Y' ...
        Q = jnp.linalg.qr(times_Y(Q.T).T)[0]  # n x width
    B = times_Yt(Q.T)  # (Y Q)' : width x m, so Y ~ B' Q'
    Ub, S, Vt = jnp.linalg.svd(B.T, full_matrices=False)  # B' = Ub S Vt
    return Ub[:, :rank], S[:rank], (Q @ Vt.T)[:, :rank].T


def _scale(Y, rank: int) -> Array:
    mean = _mean(Y)
    # An all-zero Y would give all-zero factors, from which multiplicative rules never move.
    return jnp.sqrt(jnp.where(mean > 0, mean, 1.0) / rank)


def random_init(Y, rank: int, key) -> Factors:
    """Half-normal factors scaled by ``sqrt(mean(Y) / rank)`` (strictly positive a.s.).

    With ``mean(Y) <= 0`` the scale is ``sqrt(1 / rank)``.
    """
    Y = _as_data(Y)
    rank = _check_rank(rank)
    m, n = Y.shape
    kL, kR = jax.random.split(key)
    s = _scale(Y, rank)
    L = s * jnp.abs(jax.random.normal(kL, (m, rank), Y.dtype))
    R = s * jnp.abs(jax.random.normal(kR, (rank, n), Y.dtype))
    return L, R


def uniform_init(Y, rank: int, key) -> Factors:
    """Every entry of L and R uniform on ``(0, max(Y)]``: the "random" seeding of R's
    NMF package (Gaujoux & Seoighe 2010), which draws ``runif(0, max(x))``.

    With ``max(Y) <= 0`` the bound is 1.
    """
    Y = _as_data(Y)
    rank = _check_rank(rank)
    m, n = Y.shape
    kL, kR = jax.random.split(key)
    top = _max(Y)
    top = jnp.where(top > 0, top, 1.0).astype(Y.dtype)
    L = top * (1.0 - jax.random.uniform(kL, (m, rank), Y.dtype))
    R = top * (1.0 - jax.random.uniform(kR, (rank, n), Y.dtype))
    return L, R


def _zero_out(X: Array, key, zero_fraction) -> Array:
    """Set exactly ``round(zero_fraction * X.size)`` entries, chosen uniformly, to zero."""
    n_zero = jnp.round(jnp.asarray(zero_fraction, X.dtype) * X.size).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (X.size,))))
    return jnp.where((ranks < n_zero).reshape(X.shape), 0.0, X)


def sparse_random_init(Y, rank: int, key, zero_fraction=1 / 3) -> Factors:
    """:func:`random_init` with ``round(zero_fraction * size)`` exact zeros in each factor.

    The sparse starting iterates of Pav (2024), Figure 2 (about a third of the elements
    zero).  ``zero_fraction`` may be traced.  Multiplicative updates never move such
    zeros; additive ones (AURNMF, HALS, ANLS, projected gradient) can.
    """
    Y = _as_data(Y)
    k_init, kL, kR = jax.random.split(key, 3)
    L, R = random_init(Y, rank, k_init)
    return _zero_out(L, kL, zero_fraction), _zero_out(R, kR, zero_fraction)


def _unit(x: Array, norm: Array) -> Array:
    return x / jnp.where(norm > 0, norm, 1.0)


def nndsvd(Y, rank: int, key=None) -> Factors:
    """Non-negative double SVD (Boutsidis & Gallopoulos 2008, Algorithm NNDSVD).

    From the rank leading singular triplets ``(s_j, u_j, v_j)`` of Y: the first pair is
    ``sqrt(s_1) |u_1|``, ``sqrt(s_1) |v_1|`` (Perron-Frobenius: the leading singular
    vectors of a non-negative matrix can be taken non-negative).  For j >= 2 split
    ``u_j = u+ - u-`` and ``v_j = v+ - v-`` into non-negative parts, keep the pair
    (``u+, v+`` or ``u-, v-``) with the larger product of norms ``mu``, normalize it and scale
    both by ``sqrt(s_j mu)``.  The choice is unaffected by the sign ambiguity of the SVD.
    The result is sparse (about half the entries of columns j >= 2 are zero).
    ``key`` is unused.  Requires ``rank <= min(m, n)``.
    """
    del key
    Y = _as_data(Y)
    rank = _check_rank(rank, min(Y.shape))
    U, S, Vt = _svd(Y, rank)
    V = Vt.T  # n x rank, columns v_j

    up, un = jnp.maximum(U, 0.0), jnp.maximum(-U, 0.0)
    vp, vn = jnp.maximum(V, 0.0), jnp.maximum(-V, 0.0)
    nup, nun = jnp.linalg.norm(up, axis=0), jnp.linalg.norm(un, axis=0)
    nvp, nvn = jnp.linalg.norm(vp, axis=0), jnp.linalg.norm(vn, axis=0)
    mp, mn = nup * nvp, nun * nvn
    pos = mp > mn
    u = jnp.where(pos, _unit(up, nup), _unit(un, nun))
    v = jnp.where(pos, _unit(vp, nvp), _unit(vn, nvn))
    mu = jnp.where(pos, mp, mn)

    first = jnp.arange(rank) == 0
    u = jnp.where(first, jnp.abs(U), u)
    v = jnp.where(first, jnp.abs(V), v)
    mu = jnp.where(first, 1.0, mu)
    coef = jnp.sqrt(jnp.maximum(S, 0.0) * mu)
    return u * coef[None, :], (v * coef[None, :]).T


def nndsvda(Y, rank: int, key=None) -> Factors:
    """:func:`nndsvd` with its zeros replaced by ``mean(Y)`` (no zeros, for multiplicative rules)."""
    del key
    Y = _as_data(Y)
    L, R = nndsvd(Y, rank)
    avg = _mean(Y)
    return jnp.where(L == 0, avg, L), jnp.where(R == 0, avg, R)


def nndsvdar(Y, rank: int, key) -> Factors:
    """:func:`nndsvd` with its zeros replaced by ``mean(Y) / 100 u``, u uniform on (0, 1]."""
    Y = _as_data(Y)
    L, R = nndsvd(Y, rank)
    avg = _mean(Y)
    kL, kR = jax.random.split(key)
    small_L = avg / 100 * (1.0 - jax.random.uniform(kL, L.shape, L.dtype))
    small_R = avg / 100 * (1.0 - jax.random.uniform(kR, R.shape, R.dtype))
    return jnp.where(L == 0, small_L, L), jnp.where(R == 0, small_R, R)


INITIALIZERS: dict[str, Callable[..., Factors]] = {
    "random": random_init,
    "sparse": sparse_random_init,
    "uniform": uniform_init,
    "nndsvd": nndsvd,
    "nndsvda": nndsvda,
    "nndsvdar": nndsvdar,
}
_NEEDS_KEY = ("random", "sparse", "uniform", "nndsvdar")


def _check_user_factor(name: str, X, shape: tuple[int, int], dtype) -> Array:
    X = jnp.asarray(X)
    if X.shape != shape:
        raise ValueError(f"init {name} must have shape {shape}, got {X.shape}")
    if not isinstance(X, jax.core.Tracer):
        host = np.asarray(X)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"init {name} must be finite")
        if np.any(host < 0):
            raise ValueError(f"init {name} must be non-negative (min {host.min()})")
    return X.astype(dtype)


def initialize(Y, rank: int, init: str | tuple = "random", key=None) -> Factors:
    """Starting ``(L, R)`` for a rank-``rank`` factorization of Y.

    ``init`` is one of ``"random"``, ``"sparse"``, ``"uniform"``, ``"nndsvd"``, ``"nndsvda"``, ``"nndsvdar"``
    (see the module docstring; the random ones need ``key``), or a user pair
    ``(L, R)``, checked for shapes ``m x rank`` and ``rank x n`` and, when not traced, for
    finite non-negative values; it is cast to Y's dtype.
    """
    Y = _as_data(Y)
    rank = _check_rank(rank)
    m, n = Y.shape
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ValueError(f"init must be one of {sorted(INITIALIZERS)} or an (L, R) tuple, got {init!r}")
        if init in _NEEDS_KEY and key is None:
            raise ValueError(f"init={init!r} is random: pass key=jax.random.PRNGKey(...)")
        return INITIALIZERS[init](Y, rank, key)
    if isinstance(init, tuple | list) and len(init) == 2:
        L = _check_user_factor("L", init[0], (m, rank), Y.dtype)
        R = _check_user_factor("R", init[1], (rank, n), Y.dtype)
        return L, R
    raise ValueError(f"init must be a name or an (L, R) tuple, got {type(init).__name__}")
