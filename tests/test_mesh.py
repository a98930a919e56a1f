"""Row-sharded fits: ``jnmf.fit(Y, rank, mesh=...)`` on a 1-D mesh of 4 (virtual CPU) devices.

XLA's device count is fixed when JAX starts, so the multi-device checks run in ONE
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (this pytest
process keeps its single device); the script prints its measurements as JSON and the
tests below assert on them.  The argument checks run in-process (they fail before
anything is compiled).
"""

import textwrap

import jax
import numpy as np
import pytest
import scipy.sparse
from device_script import run_on_devices  # (tests/ is on sys.path under pytest)
from jax.sharding import Mesh

import jnmf

M_ROWS, N_COLS, RANK, DEVICES, RESTARTS = 24, 10, 3, 4, 2
METHODS = ("mu", "hals", "ahals", "au", "kl")
HLO_METHODS = ("mu", "hals", "kl", "sparse-hals")
SPARSE_METHODS = ("mu", "hals")
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")

SCRIPT = textwrap.dedent(
    """
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np, scipy.sparse as sp
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jnmf
    from jnmf.batch import _prepare, _restarts
    from jnmf.data import sharded_operator, sharded_sparse, sparse_operator
    from jnmf.problem import build_problem
    from jnmf.rules import make_rule

    m, n, k, b = {m}, {n}, {k}, {b}
    assert len(jax.devices()) == {d}
    mesh = Mesh(np.array(jax.devices()), ("rows",))
    Y = np.random.default_rng(0).random((m, n))
    out = {{"fits": {{}}, "hlo": {{}}}}

    def describe(one, many):
        L, R = many.L, many.R
        return dict(
            dL=float(np.max(np.abs(np.asarray(one.L) - np.asarray(L)))),
            dR=float(np.max(np.abs(np.asarray(one.R) - np.asarray(R)))),
            dobj=float(abs(one.objective - many.objective)),
            best=[int(one.best), int(many.best)],
            L_spec=[None if a is None else str(a) for a in L.sharding.spec],
            L_devices=len(L.sharding.device_set),
            L_shard_rows=sorted({{int(s.data.shape[0]) for s in L.addressable_shards}}),
            R_replicated=bool(R.sharding.is_fully_replicated),
            R_devices=len(R.sharding.device_set),
        )

    for method in {methods!r}:
        kw = dict(method=method, max_iterations=15, tol=0.0, restarts=b, key=3)
        out["fits"][method] = describe(jnmf.fit(Y, k, **kw), jnmf.fit(Y, k, mesh=mesh, **kw))

    # sparse Y, one device's row block without stored entries
    Ysp = sp.random(m, n, density=0.3, format="csr", random_state=0)
    Ysp = sp.vstack([Ysp[: m // 4], sp.csr_matrix((m // 4, n)), Ysp[m // 2 :]]).tocsr()
    for method in {sparse_methods!r}:
        kw = dict(method=method, max_iterations=15, tol=0.0, restarts=b, key=3)
        out["fits"]["sparse-" + method] = describe(jnmf.fit(Ysp, k, **kw), jnmf.fit(Ysp, k, mesh=mesh, **kw))

    # a Y already sharded by rows: fitted on its own mesh, no mesh= needed
    Ys = jax.device_put(Y, NamedSharding(mesh, P("rows", None)))
    kw = dict(method="hals", max_iterations=15, tol=0.0, key=5)
    out["presharded"] = describe(jnmf.fit(Y, k, **kw), jnmf.fit(Ys, k, **kw))

    # the compiled program of the restarts loop (the one fit runs), per method
    kinds = "|".join({collectives!r})
    pattern = re.compile(r"= (.+?) (" + kinds + r")(?:-start)?\\(")
    def collectives(method, data):
        rule = make_rule(method.removeprefix("sparse-"))
        problem = build_problem(data, k)
        rows = data.shape[0]
        L0 = jax.device_put(jnp.full((b, rows, k), 0.5), NamedSharding(mesh, P(None, "rows", None)))
        R0 = jax.device_put(jnp.full((b, k, n), 0.5), NamedSharding(mesh, P()))
        states, opts, strategy = _prepare(rule, problem, L0, R0, None, {{}}, 50, None, None)
        lowered = _restarts.lower(rule, problem, states, opts, 50, None, strategy, None)
        text = lowered.compile().compiled.as_text()
        found = []
        for types, kind in pattern.findall(text):
            dims = re.findall(r"\\w+\\[([\\d,]*)\\]", types)
            shapes = [[int(x) for x in d.split(",") if x] for d in dims]
            found.append([kind, shapes])
        return dict(strategy=strategy, collectives=found)

    for method in {hlo_methods!r}:
        if method.startswith("sparse-"):
            data = sharded_sparse(sparse_operator("Y", Ysp), mesh)
        else:
            data = sharded_operator("Y", Y, mesh)
        out["hlo"][method] = collectives(method, data)
    # more rows per device than one tile of the HALS sweep (jnmf.rules.hals_sweeps.TILE)
    from jnmf.rules.hals_sweeps import TILE
    Ytall = np.random.default_rng(1).random(({d} * (TILE + 100), n))
    for method in ("hals", "ahals"):
        out["hlo"]["tall-" + method] = collectives(method, sharded_operator("Y", Ytall, mesh))

    # the row-blocked dense loss with several blocks per device (BLOCK_ENTRIES lowered):
    # through the sharded operator, and (the control) through GSPMD on the plain operator
    import jnmf.data
    from jnmf.weights import Weight
    jnmf.data.BLOCK_ENTRIES = 16  # blocks of 8 rows; 16 rows per device
    Y2 = jax.device_put(np.ones((64, n)), NamedSharding(mesh, P("rows", None)))
    L2 = jax.device_put(np.ones((64, k)), NamedSharding(mesh, P("rows", None)))
    R2 = jax.device_put(np.ones((k, n)), NamedSharding(mesh, P()))
    I = Weight.identity()
    operators = dict(sharded=lambda Y: jnmf.data.RowShardedData(Y, mesh), gspmd=jnmf.data.DenseData)
    out["blocked_loss"] = {{}}
    for name, make in operators.items():
        text = jax.jit(lambda Y, L, R: make(Y).loss(L, R, I, I)).lower(Y2, L2, R2).compile().as_text()
        out["blocked_loss"][name] = sorted({{kind for _, kind in pattern.findall(text)}})

    # fits whose blocks loop inside each device: the dense loss over 2 row blocks per
    # device, the sparse products over 2 chunks of stored entries per device
    rng = np.random.default_rng(4)
    kw = dict(max_iterations=10, tol=0.0, key=1, method="mu")
    Yb = rng.random((64, n))
    out["fits"]["blocked-mu"] = describe(jnmf.fit(Yb, k, **kw), jnmf.fit(Yb, k, mesh=mesh, **kw))
    Yc = sp.random(64, 400, density=0.7, format="csr", random_state=4)  # > 4096 entries per device
    kw["method"] = "hals"
    out["fits"]["chunked-sparse-hals"] = describe(jnmf.fit(Yc, k, **kw), jnmf.fit(Yc, k, mesh=mesh, **kw))

    # a mesh whose size does not divide the rows
    try:
        jnmf.fit(Y[:22], k, mesh=mesh, max_iterations=2)
        out["indivisible"] = None
    except ValueError as err:
        out["indivisible"] = str(err)
    print("JSON" + json.dumps(out))
    """
).format(
    m=M_ROWS,
    n=N_COLS,
    k=RANK,
    b=RESTARTS,
    d=DEVICES,
    methods=METHODS,
    hlo_methods=HLO_METHODS,
    sparse_methods=SPARSE_METHODS,
    collectives=COLLECTIVES,
)


@pytest.fixture(scope="module")
def report():
    return run_on_devices(SCRIPT, DEVICES)


def _check_layout(fit: dict) -> None:
    assert fit["L_spec"] in (["rows", None], ["rows"])
    assert fit["L_devices"] == DEVICES
    assert fit["L_shard_rows"] == [M_ROWS // DEVICES]  # each device holds its own rows only
    assert fit["R_replicated"] and fit["R_devices"] == DEVICES


@pytest.mark.parametrize("method", METHODS)
def test_sharded_fit_equals_one_device_fit(report, method):
    fit = report["fits"][method]
    assert fit["dL"] < 1e-10 and fit["dR"] < 1e-10, fit
    assert fit["dobj"] < 1e-10, fit
    assert fit["best"][0] == fit["best"][1]
    _check_layout(fit)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_sharded_sparse_fit_equals_one_device_fit(report, method):
    fit = report["fits"]["sparse-" + method]
    assert fit["dL"] < 1e-10 and fit["dR"] < 1e-10 and fit["dobj"] < 1e-10, fit
    _check_layout(fit)


@pytest.mark.parametrize("case", ["blocked-mu", "chunked-sparse-hals"])
def test_sharded_fit_with_loops_inside_each_device(report, case):
    """Several dense row blocks / sparse chunks per device (loops inside shard_map)."""
    fit = report["fits"][case]
    assert fit["dL"] < 1e-10 and fit["dR"] < 1e-10 and fit["dobj"] < 1e-10, fit
    assert fit["L_devices"] == DEVICES and fit["R_replicated"]


def test_y_sharded_by_rows_is_fitted_on_its_mesh(report):
    fit = report["presharded"]
    assert fit["dL"] < 1e-10 and fit["dR"] < 1e-10 and fit["dobj"] < 1e-10, fit
    _check_layout(fit)


@pytest.mark.parametrize("method", ["tall-hals", "tall-ahals"])
def test_hals_sweeps_a_tall_sharded_l_in_place(report, method):
    """With more rows per device than one tile of the HALS sweep, L is swept whole on
    each device: cutting it into tiles in a loop made GSPMD all-gather L (k x m)."""
    kinds = {kind for kind, _ in report["hlo"][method]["collectives"]}
    assert kinds == {"all-reduce"}, report["hlo"][method]["collectives"]


@pytest.mark.parametrize("method", HLO_METHODS)
def test_compiled_loop_reduces_only_small_sums(report, method):
    """The compiled fit all-reduces k x n, k x k (and smaller) partial sums, and never
    gathers Y or L: no other collective, no collective with a dimension of m or m / devices."""
    collectives = report["hlo"][method]["collectives"]
    kinds = {kind for kind, _ in collectives}
    assert kinds == {"all-reduce"}, collectives
    shapes = [tuple(s) for _, group in collectives for s in group]
    for shape in shapes:
        assert M_ROWS not in shape and M_ROWS // DEVICES not in shape, shapes
        assert np.prod(shape, dtype=int) <= RESTARTS * RANK * N_COLS, shapes
    # the R step's Lt Y: k x n (per restart when the restarts are vmapped)
    assert any(s[-2:] == (RANK, N_COLS) for s in shapes), shapes
    if method != "kl":  # Frobenius rules: the Gram matrix Lt Lt' (k x k)
        assert any(s[-2:] == (RANK, RANK) for s in shapes), shapes


def test_blocked_loss_is_summed_per_device(report):
    """The dense loss sums row blocks of the residual in a loop (jnmf.data.DenseData.loss);
    left to GSPMD, that loop gathers Y and L (the control), so the sharded operator runs
    it per device in shard_map and all-reduces one scalar."""
    assert report["blocked_loss"]["sharded"] == ["all-reduce"]
    assert "all-gather" in report["blocked_loss"]["gspmd"]


def test_mesh_must_divide_the_rows(report):
    message = report["indivisible"]
    assert message is not None and "mesh" in message and "22 rows" in message


# --------------------------------------------------------------- argument checks (in-process)
Y_SMALL = np.random.default_rng(1).random((8, 5))


def _one_device_mesh(shape=(1,), names=("rows",)):
    return Mesh(np.array(jax.devices()[:1]).reshape(shape), names)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mesh="rows"), "mesh must be a jax.sharding.Mesh"),
        (dict(mesh=_one_device_mesh((1, 1), ("a", "b"))), "mesh must be a 1-D mesh"),
        (dict(mesh=_one_device_mesh(), M=np.ones((8, 5))), "M is not supported with mesh"),
        (dict(mesh=_one_device_mesh(), W_0R=np.ones(8)), "W_0R is not supported with mesh"),
        (dict(mesh=_one_device_mesh(), missing="nan"), "missing='nan' is not supported with mesh"),
    ],
)
def test_bad_mesh_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y_SMALL, 2, **kwargs)


@pytest.mark.parametrize("bad, match", [(-1.0, "Y must be non-negative"), (np.nan, "Y must be finite")])
def test_device_array_y_is_validated_on_its_devices(bad, match):
    Y = jax.numpy.asarray(Y_SMALL).at[3, 2].set(bad)
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y, 2, mesh=_one_device_mesh())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="kl"), "Frobenius methods only"),
        (dict(missing="unstored"), "missing='unstored' is not supported with mesh"),
    ],
)
def test_sparse_y_with_mesh_refuses_what_it_cannot_do(kwargs, match):
    Y = scipy.sparse.random(8, 5, density=0.5, format="csr", random_state=2)
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y, 2, mesh=_one_device_mesh(), max_iterations=2, **kwargs)


@pytest.mark.filterwarnings("ignore::jnmf.fitting.ConvergenceWarning")
def test_one_device_mesh_fits_like_no_mesh():
    kw = dict(method="mu", max_iterations=5, tol=0.0)
    a, b = jnmf.fit(Y_SMALL, 2, **kw), jnmf.fit(Y_SMALL, 2, mesh=_one_device_mesh(), **kw)
    np.testing.assert_allclose(np.asarray(b.L), np.asarray(a.L), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b.R), np.asarray(a.R), rtol=0, atol=1e-12)


def test_all_zero_y_on_a_mesh_returns_factors_on_the_mesh():
    mesh = _one_device_mesh()
    res = jnmf.fit(np.zeros((8, 5)), 2, mesh=mesh)
    assert res.status_name == "converged" and not np.any(np.asarray(res.L))
    assert res.L.sharding.spec == jax.sharding.PartitionSpec("rows", None)
    assert res.R.sharding.is_fully_replicated
