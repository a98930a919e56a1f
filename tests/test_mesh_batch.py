"""Fits spread over devices: ``mesh=`` with a ``"fits"`` axis on 4 (virtual CPU) devices.

``fit(restarts=...)``, ``sweep``, ``consensus`` and ``cross_validate_rank`` split their
batch of fits over the mesh's devices, Y replicated on each.  As in tests/test_mesh.py,
XLA's device count is fixed when JAX starts, so the 4-device runs and their one-device
references run in ONE subprocess with ``--xla_force_host_platform_device_count=4``
(float64); it prints its measurements as JSON and the tests below assert on them.  The
argument checks run in-process (they fail before anything is compiled).
"""

import textwrap

import jax
import numpy as np
import pytest
from device_script import run_on_devices  # (tests/ is on sys.path under pytest)
from jax.sharding import Mesh

import jnmf

DEVICES, RANKS, SURVEY_RESTARTS = 4, (2, 3, 4, 5), 50
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")

SCRIPT = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jnmf
    from jnmf.batch import _P, _padded, _placed, _prepare, _spread_restarts
    from jnmf.problem import build_problem
    from jnmf.rules import make_rule

    assert len(jax.devices()) == {devices}
    mesh = Mesh(np.array(jax.devices()), ("fits",))
    rng = np.random.default_rng(0)
    Y = rng.random((60, 40))  # float64
    out = {{}}

    def gap(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))

    # the survey: 4 ranks x 50 restarts, (rank, restart) pairs spread over the devices
    kw = dict(restarts={restarts}, key=1, max_iterations=40, stable_labels=0)
    one = jnmf.consensus(Y, {ranks!r}, **kw)
    spread = jnmf.consensus(Y, {ranks!r}, mesh=mesh, **kw)
    out["survey"] = [
        dict(
            dL=gap(a.L, b.L), dR=gap(a.R, b.R), dobj=gap(a.objectives, b.objectives) / abs(a.best_objective),
            best=[a.best, b.best], labels=bool(np.array_equal(a.labels, b.labels)),
            dC=gap(a.consensus, b.consensus), dcoph=abs(a.cophenetic - b.cophenetic),
            iterations=bool(np.array_equal(a.iterations, b.iterations)),
        )
        for a, b in zip(one, spread)
    ]
    # rank cross-validation: 2 repeats x 3 ranks x 3 restarts (the 9 starts pad to 12)
    kw = dict(repeats=2, restarts=3, key=2, max_iterations=30, method="mu")
    a = jnmf.cross_validate_rank(Y, [2, 3, 4], **kw)
    b = jnmf.cross_validate_rank(Y, [2, 3, 4], mesh=mesh, **kw)
    out["cv"] = dict(
        dtest=gap(a.test_error, b.test_error) / float(np.max(a.test_error)),
        dtrain=gap(a.train_error, b.train_error) / float(np.max(a.train_error)),
        selected=[int(a.selected_rank), int(b.selected_rank)],
    )

    # fit with 8 restarts, batched (vmap)
    kw = dict(method="mu", restarts=8, key=3, max_iterations=50, tol=0.0, return_all=True)
    a, b = jnmf.fit(Y, 4, **kw), jnmf.fit(Y, 4, mesh=mesh, **kw)
    out["fit"] = dict(
        dL=gap(a.L, b.L), dR=gap(a.R, b.R), dall=gap(a.all_L, b.all_L), best=[a.best, b.best],
        dobj=gap(a.objectives, b.objectives) / abs(a.objective), shape=list(b.all_L.shape),
    )

    # a penalty sweep: 5 settings x 2 restarts (the settings pad to 8)
    kw = dict(method="mu", restarts=2, key=4, max_iterations=40, tol=0.0, factors="all")
    grid = {{"lambda_1L": [0.0, 0.1, 0.3, 1.0, 3.0]}}
    a, b = jnmf.sweep(Y, 3, grid, **kw), jnmf.sweep(Y, 3, grid, mesh=mesh, **kw)
    out["sweep"] = dict(
        dL=gap(a.L, b.L), dR=gap(a.R, b.R),
        dobj=gap(a.objectives, b.objectives) / float(np.max(a.objectives)),
        best=[a.best.tolist(), b.best.tolist()], shape=list(b.L.shape),
    )

    # the compiled program of spread restarts: which collectives, on which shapes
    rule, problem = make_rule("mu"), build_problem(jnp.asarray(Y), 4)
    L0, R0 = jnp.full((6, 60, 4), 0.5), jnp.full((6, 4, 40), 0.5)
    states, opts, strategy = _prepare(rule, problem, L0, R0, None, {{}}, 8, None, "vmap")
    states = _placed(_padded(states, 8), mesh, _P("fits"))
    rule, problem, opts = _placed((rule, problem, opts), mesh, _P())
    lowered = _spread_restarts.lower(rule, problem, states, opts, 8, None, strategy, mesh)
    text = lowered.compile().compiled.as_text()
    kinds = "|".join({collectives!r})
    pattern = re.compile(r"= (.+?) (" + kinds + r")(?:-start)?\\(")
    out["hlo"] = [[kind, types] for types, kind in pattern.findall(text)]
    out["hlo_lines"] = text.count("\\n")
    out["hlo_y"] = "f64[60,40]" in text  # Y is in the program, whole on each device
    print("JSON" + json.dumps(out))
    """
).format(devices=DEVICES, ranks=RANKS, restarts=SURVEY_RESTARTS, collectives=COLLECTIVES)


@pytest.fixture(scope="module")
def report():
    return run_on_devices(SCRIPT, DEVICES)


def test_spread_survey_equals_one_device_survey(report):
    """4 ranks x 50 restarts on 4 devices: the same fits, best restarts and clusterings."""
    assert len(report["survey"]) == len(RANKS)
    for rank in report["survey"]:
        assert rank["dL"] < 1e-10 and rank["dR"] < 1e-10 and rank["dobj"] < 1e-10, rank
        assert rank["best"][0] == rank["best"][1], rank
        assert rank["labels"] and rank["iterations"], rank
        assert rank["dC"] == 0.0 and rank["dcoph"] < 1e-12, rank


def test_spread_cross_validation_equals_one_device(report):
    cv = report["cv"]
    assert cv["dtest"] < 1e-10 and cv["dtrain"] < 1e-10, cv
    assert cv["selected"][0] == cv["selected"][1]


def test_spread_restarts_equal_one_device_fit(report):
    fit = report["fit"]
    assert fit["dL"] < 1e-10 and fit["dR"] < 1e-10 and fit["dall"] < 1e-10, fit
    assert fit["dobj"] < 1e-10 and fit["best"][0] == fit["best"][1], fit
    assert fit["shape"] == [8, 60, 4]


def test_spread_sweep_equals_one_device_sweep(report):
    sweep = report["sweep"]
    assert sweep["dL"] < 1e-10 and sweep["dR"] < 1e-10 and sweep["dobj"] < 1e-10, sweep
    assert sweep["best"][0] == sweep["best"][1]
    assert sweep["shape"] == [5, 2, 60, 3]  # the padded settings are dropped


def test_spread_program_has_no_collective(report):
    """Each device runs its own fits with Y whole: the compiled program moves nothing
    between devices (no all-gather of Y, nor any other collective)."""
    assert report["hlo_y"] and report["hlo_lines"] > 0
    assert report["hlo"] == [], report["hlo"]


# --------------------------------------------------------------- argument checks (in-process)
Y_SMALL = np.random.default_rng(1).random((8, 6))


def _mesh(names=("fits",), shape=(1,)):
    return Mesh(np.array(jax.devices()[:1]).reshape(shape), names)


@pytest.mark.parametrize(
    "call",
    [
        lambda mesh: jnmf.sweep(Y_SMALL, 2, {"lambda_1L": [0.0, 0.1]}, mesh=mesh),
        lambda mesh: jnmf.consensus(Y_SMALL, [2, 3], restarts=2, mesh=mesh),
        lambda mesh: jnmf.cross_validate_rank(Y_SMALL, [2, 3], mesh=mesh),
    ],
    ids=["sweep", "consensus", "cross_validate_rank"],
)
@pytest.mark.parametrize(
    "mesh, match",
    [
        ("fits", "mesh must be a jax.sharding.Mesh"),
        (_mesh(("rows",)), "mesh must have an axis named 'fits'"),
        (_mesh(("fits", "rows"), (1, 1)), "mesh must be a 1-D mesh"),
    ],
    ids=["not-a-mesh", "no-fits-axis", "two-axes"],
)
def test_bad_fits_mesh_is_refused(call, mesh, match):
    with pytest.raises(ValueError, match=match):
        call(mesh)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mesh=_mesh(("fits", "rows"), (1, 1))), "mesh must be a 1-D mesh"),
        (dict(mesh=_mesh(), verbose=1), "not supported with a 'fits' mesh"),
    ],
)
def test_fit_refuses_what_spread_restarts_cannot_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y_SMALL, 2, **kwargs)
