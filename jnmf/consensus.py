"""Consensus clustering and rank selection (Brunet et al. 2004), on batched restarts.

Each restart assigns sample j to the factor with the largest R[:, j]; the
consensus matrix is the fraction of restarts that put two samples together.
The cophenetic correlation of its average-linkage clustering measures how
stable the clustering is at that rank: Brunet et al. pick the rank where it
starts to fall.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .fitting import fit


class Consensus(eqx.Module):
    rank: int = eqx.field(static=True)
    consensus: Array  # n x n, fraction of restarts clustering i with j
    labels: Array  # n, cluster of each sample in the best restart
    cophenetic: float = eqx.field(static=True)
    objectives: Array  # each restart's objective (the one its method minimizes)
    loss: Array  # each restart's 1/2 ||Y - LR||_F^2


def connectivity(R: Array) -> Array:
    """C_ij = 1 when samples i and j have the same dominant factor (argmax over R's rows)."""
    a = jnp.argmax(R, axis=0)
    return (a[:, None] == a[None, :]).astype(R.dtype)


def average_linkage_cophenetic(D: np.ndarray) -> np.ndarray:
    """Cophenetic distances of the UPGMA (average-linkage) tree of distance matrix D."""
    n = D.shape[0]
    D = np.asarray(D, float).copy()
    np.fill_diagonal(D, np.inf)
    clusters = {i: [i] for i in range(n)}
    dist = {(i, j): D[i, j] for i in range(n) for j in range(i + 1, n)}
    coph = np.zeros((n, n))
    next_id = n
    while len(clusters) > 1:
        (a, b), h = min(dist.items(), key=lambda kv: kv[1])
        ma, mb = clusters.pop(a), clusters.pop(b)
        coph[np.ix_(ma, mb)] = h
        coph[np.ix_(mb, ma)] = h
        new = ma + mb
        for c in list(clusters):
            da = dist.pop((min(a, c), max(a, c)))
            db = dist.pop((min(b, c), max(b, c)))
            dist[(c, next_id)] = (len(ma) * da + len(mb) * db) / len(new)
        del dist[(a, b)]
        clusters[next_id] = new
        next_id += 1
    return coph


def cophenetic_correlation(consensus: np.ndarray) -> float:
    """Pearson correlation of 1 - consensus with the cophenetic distances of its UPGMA tree."""
    D = 1.0 - np.asarray(consensus, float)
    iu = np.triu_indices(D.shape[0], 1)
    c = average_linkage_cophenetic(D)[iu]
    d = D[iu]
    if np.std(d) == 0 or np.std(c) == 0:
        return 1.0
    return float(np.corrcoef(d, c)[0, 1])


def consensus(
    Y, rank: int, *, restarts: int = 20, method="kl", key=None, max_iterations: int = 500, tol=1e-4
) -> Consensus:
    """Consensus matrix and cophenetic correlation of ``restarts`` fits (one program).

    Args:
        Y: ``m x n`` non-negative data (samples are the n columns).
        rank: the number of factors (clusters).
        restarts: number of random restarts.
        method: any method of :func:`jnmf.fit`; default the KL-divergence update Brunet
            et al. (2004) used.
        key: int seed, JAX key or NumPy Generator.
        max_iterations, tol: stopping settings of each restart.

    Returns:
        A :class:`Consensus`.
    """
    res = fit(
        Y, rank, method=method, restarts=restarts, key=key, max_iterations=max_iterations, tol=tol,
        history_size=1, return_all=True,
    )  # fmt: skip
    C = jnp.mean(jax.vmap(connectivity)(res.all_R), axis=0)
    Yh = jnp.asarray(np.asarray(Y), res.L.dtype)
    loss = jax.vmap(lambda L, R: 0.5 * jnp.sum((Yh - L @ R) ** 2))(res.all_L, res.all_R)
    labels = jnp.argmax(res.R, axis=0)
    return Consensus(
        rank, C, labels, cophenetic_correlation(np.asarray(C)), jnp.asarray(res.objectives), loss
    )
