"""Tiled HALS sweeps (jnmf.rules.hals_sweeps) against the untiled sweep they replace.

Runs in float64 (jax_enable_x64 is switched on in conftest.py), so "same
iterate" can be checked to ~1e-12 (tiling changes only the order of the change sums).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf.quadratic import HalfProblem, half_problem_L, half_problem_R
from jnmf.rules.hals_sweeps import TILE, hals_sweeps, sweep_tile
from jnmf.weights import Weight


def reference_sweeps(hp, Xt, max_sweeps, delta, count=False):
    """The untiled sweeps as they were before tiling (row by row over the whole Xt).
    With ``count`` it also returns the number of sweeps run."""
    k = Xt.shape[0]
    mixing, others = hp.split_terms()
    curvature = hp.block_majorizer()

    def sweep(Xt):
        def update(j, Xt):
            g = mixing[j] @ Xt
            for p_side, B in others:
                g = g + p_side.right((B[j] @ Xt)[None, :])[0]
            g = g + hp.linear[j]
            c = curvature[j]
            row = Xt[j]
            new = jnp.where(c > 0, jnp.maximum(row - g / jnp.where(c > 0, c, 1.0), 0.0), row)
            return Xt.at[j].set(new)

        return jax.lax.fori_loop(0, k, update, Xt)

    X1 = sweep(Xt)
    n = jnp.ones((), jnp.int32)
    if max_sweeps > 1:
        first = jnp.sum((X1 - Xt) ** 2)

        def cond(c):
            return (c[0] < max_sweeps) & (c[2] > delta**2 * first)

        def body(c):
            X_new = sweep(c[1])
            return c[0] + 1, X_new, jnp.sum((X_new - c[1]) ** 2)

        n, X1, _ = jax.lax.while_loop(cond, body, (n, X1, first))
    return (X1, n) if count else X1


def random_half_problem(seed, k, p, zero_rows=(), extra=()):
    """A HalfProblem with a random PSD gram (rows in ``zero_rows`` of the fixed factor
    vanish, so their curvature is 0) and a random linear term of both signs."""
    rng = np.random.default_rng(seed)
    F = rng.random((k, 3 * k + 2))
    F[list(zero_rows)] = 0.0
    gram = F @ F.T
    linear = rng.standard_normal((k, p)) * 2.0 - 1.0
    Xt = rng.random((k, p))
    return HalfProblem(jnp.asarray(gram), Weight.identity(), jnp.asarray(linear), tuple(extra)), jnp.asarray(
        Xt
    )


def check_close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "k, p, tile",
    [(5, 64, 16), (5, 70, 16), (4, 10, 16), (1, 33, 8), (7, 129, 128), (25, 300, 64), (3, 8, 8)],
    ids=["multiple", "remainder", "p<tile", "k=1", "remainder-1", "k25", "one-tile"],
)
@pytest.mark.parametrize("max_sweeps", [1, 6])
def test_tiled_equals_untiled(k, p, tile, max_sweeps):
    hp, Xt = random_half_problem(k * 1000 + p, k, p)
    delta = jnp.asarray(0.1)
    got = jax.jit(lambda hp, X: hals_sweeps(hp, X, max_sweeps, delta, tile=tile))(hp, Xt)
    check_close(got, reference_sweeps(hp, Xt, max_sweeps, delta))


def test_sweep_tile_by_backend():
    """CPU sweeps run in cache-sized tiles; on an accelerator one tile spans all p
    columns (each loop pass there is a kernel launch and a host read of the counter)."""
    assert sweep_tile("cpu", 10304) == TILE
    assert sweep_tile("gpu", 10304) == 10304
    assert sweep_tile("tpu", 7) == 7
    # the accelerator's choice is the single-tile sweep, the iterate of the reference (float64)
    hp, Xt = random_half_problem(12, 5, 70)
    delta = jnp.asarray(0.1)
    got = hals_sweeps(hp, Xt, 6, delta, tile=sweep_tile("gpu", 70))
    check_close(got, reference_sweeps(hp, Xt, 6, delta))


def test_zero_curvature_rows_unchanged():
    hp, Xt = random_half_problem(3, 6, 50, zero_rows=(1, 4))
    got = hals_sweeps(hp, Xt, 3, jnp.asarray(0.0), tile=16)
    check_close(got, reference_sweeps(hp, Xt, 3, jnp.asarray(0.0)))
    check_close(got[1], Xt[1])
    check_close(got[4], Xt[4])
    assert np.all(np.isfinite(np.asarray(got)))


@pytest.mark.parametrize("delta", [0.0, 0.05, 0.3, 0.9])
def test_accelerated_sweep_count(delta):
    """The early exit stops after as many sweeps as before: the iterate after the
    tiled sweeps equals the untiled one after exactly the reference's count, and
    differs from the iterate one sweep earlier or later."""
    hp, Xt = random_half_problem(11, 6, 90)
    d = jnp.asarray(delta)
    want, n = reference_sweeps(hp, Xt, 40, d, count=True)
    n = int(n)
    got = hals_sweeps(hp, Xt, 40, d, tile=32)
    check_close(got, want)
    check_close(got, reference_sweeps(hp, Xt, n, jnp.asarray(0.0)))
    if 1 < n < 40:
        assert not np.allclose(
            np.asarray(got), np.asarray(hals_sweeps(hp, Xt, n - 1, jnp.asarray(0.0), tile=32))
        )
        assert not np.allclose(
            np.asarray(got), np.asarray(hals_sweeps(hp, Xt, n + 1, jnp.asarray(0.0), tile=32))
        )
    if delta == 0.0:
        assert n == 40
    if delta == 0.9:
        assert n < 40


def test_vmapped_equals_unbatched():
    """Under plain vmap (no fitwise) each fit keeps its own iterate and early exit."""
    problems = [random_half_problem(s, 5, 70) for s in range(4)]
    hp = jax.tree.map(lambda *a: jnp.stack(a), *[h for h, _ in problems])
    Xt = jnp.stack([x for _, x in problems])
    delta = jnp.asarray(0.2)
    got = jax.jit(jax.vmap(lambda h, x: hals_sweeps(h, x, 12, delta, tile=16)))(hp, Xt)
    for i, (h, x) in enumerate(problems):
        check_close(got[i], reference_sweeps(h, x, 12, delta))
    # the shared (unbatched) problem with batched starts, as in restarts
    h0 = problems[0][0]
    got = jax.vmap(lambda x: hals_sweeps(h0, x, 12, delta, tile=16))(Xt)
    for i in range(4):
        check_close(got[i], reference_sweeps(h0, Xt[i], 12, delta))


def _nmf_problem(seed, **penalties):
    rng = np.random.default_rng(seed)
    m, n, k = 37, 21, 4
    Y = rng.random((m, k)) @ rng.random((k, n)) + 0.1 * rng.random((m, n))
    P = jnmf.build_problem(jnp.asarray(Y), k, **penalties)
    return P, jnp.asarray(rng.random((k, m))), jnp.asarray(rng.random((k, n)))


@pytest.mark.parametrize(
    "penalties",
    [
        {},
        {"lambda_1L": 0.3, "lambda_2L": 0.5, "gamma_2L": 0.2, "lambda_2R": 0.1},
        {"gamma_2R": 0.4},  # couples the columns of R: untiled path (through the cond)
        {"W_0C": np.linspace(0.5, 1.5, 21)},  # diagonal p-side weight on R: untiled
    ],
    ids=["plain", "L-penalties", "gamma_2R", "diag-W0C"],
)
def test_half_problems_of_nmf(penalties):
    """Both half problems of jnmf.build_problem, whose R side always holds a
    non-orthogonality term (gamma_2R, 0 unless given)."""
    P, Lt, R = _nmf_problem(5, **penalties)
    delta = jnp.asarray(0.1)
    for hp, X in ((half_problem_L(P, Lt, R), Lt), (half_problem_R(P, Lt, R), R)):
        got = jax.jit(lambda hp, X: hals_sweeps(hp, X, 7, delta, tile=8))(hp, X)
        check_close(got, reference_sweeps(hp, X, 7, delta))


def test_gamma_grid_under_vmap():
    """gamma_2R batched under vmap (a penalty grid): the cond sees a batched predicate
    and each fit still gets its own path's iterate."""
    P, Lt, R = _nmf_problem(8)
    gammas = jnp.asarray([0.0, 0.3, 0.0])

    def one(g):
        Pg = P.replace(gamma_2R=g)
        return hals_sweeps(half_problem_R(Pg, Lt, R), R, 5, jnp.asarray(0.1), tile=8)

    got = jax.jit(jax.vmap(one))(gammas)
    for i, g in enumerate(gammas):
        Pg = P.replace(gamma_2R=g)
        check_close(got[i], reference_sweeps(half_problem_R(Pg, Lt, R), R, 5, jnp.asarray(0.1)))


def test_accelerated_hals_sweeps_once_off_cpu(monkeypatch):
    """Gillis & Glineur's flop count picks many sweeps for ORL's R (85 at alpha 0.2) on
    CPU; on an accelerator, where a sweep costs k kernel launches, accelerated HALS
    sweeps once.  An explicit inner_sweeps is kept everywhere."""
    from jnmf.rules import hals as hals_module

    rule = jnmf.rules.HALS(inner_sweeps=None, alpha=0.2)
    assert rule.sweeps(400, 10304, 25) == 85
    assert rule.sweeps(10304, 400, 25) == 4
    monkeypatch.setattr(hals_module.jax, "default_backend", lambda: "gpu")
    assert rule.sweeps(400, 10304, 25) == 1
    assert jnmf.rules.HALS(inner_sweeps=3).sweeps(400, 10304, 25) == 3
