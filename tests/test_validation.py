"""Input validation of the front doors (ValueError naming the argument) and robustness
to degenerate data (zero rows / columns of Y, zero columns of L) in float32 and float64.
"""

# float64 must be available for the float64 half of the robustness tests (x64 is switched
# on in conftest.py; float32 inputs stay float32: the fit dtype is the inputs' dtype).
import numpy as np
import pytest

import jnmf

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

M, N, K = 12, 9, 3
rng = np.random.default_rng(0)
Y = rng.random((M, N))
L = rng.random((M, K))
R = rng.random((K, N))
G = (lambda A: A.T @ A + 0.1 * np.eye(8))(rng.random((10, 8)))
d = rng.normal(size=8)
x0 = rng.random(8)
FRONT = {"murnmf": jnmf.murnmf, "aurnmf": jnmf.aurnmf, "gaurnmf": jnmf.gaurnmf}


def with_(a, idx, value):
    a = np.array(a, copy=True)
    a[idx] = value
    return a


def sym(n, seed=1):
    B = np.random.default_rng(seed).random((n, n))
    return B @ B.T


def nonsym(n):
    return sym(n) + np.triu(np.ones((n, n)), 1)


# (description, call, regex that the message must match)
FACTOR_CASES = [
    ("Y negative", lambda f: f(with_(Y, (0, 0), -1.0), L, R), r"^Y must be non-negative"),
    ("Y NaN", lambda f: f(with_(Y, (1, 2), np.nan), L, R), r"^Y must be finite"),
    ("Y inf", lambda f: f(with_(Y, (1, 2), np.inf), L, R), r"^Y must be finite"),
    ("L negative", lambda f: f(Y, with_(L, (0, 0), -1e-3), R), r"^L must be non-negative"),
    ("L NaN", lambda f: f(Y, with_(L, (3, 1), np.nan), R), r"^L must be finite"),
    ("L inf", lambda f: f(Y, with_(L, (3, 1), np.inf), R), r"^L must be finite"),
    ("R negative", lambda f: f(Y, L, with_(R, (2, 8), -5.0)), r"^R must be non-negative"),
    ("R NaN", lambda f: f(Y, L, with_(R, (2, 8), np.nan)), r"^R must be finite"),
    ("R -inf", lambda f: f(Y, L, with_(R, (2, 8), -np.inf)), r"^R must be finite"),
    ("Y integer", lambda f: f(np.ones((M, N), int), L, R), r"^Y must be a floating-point array"),
    ("L integer", lambda f: f(Y, np.ones((M, K), np.int32), R), r"^L must be a floating-point array"),
    ("R bool", lambda f: f(Y, L, np.ones((K, N), bool)), r"^R must be a floating-point array"),
    ("Y empty", lambda f: f(np.zeros((0, N)), L, R), r"^Y must not be empty"),
    ("L empty", lambda f: f(Y, np.zeros((M, 0)), np.zeros((0, N))), r"^L must not be empty"),
    ("Y 1-d", lambda f: f(Y[0], L, R), r"^Y must be a 2-d matrix"),
    ("R 3-d", lambda f: f(Y, L, R[None]), r"^R must be a 2-d matrix"),
    ("Y None", lambda f: f(None, L, R), r"^Y is required"),
    ("L rows", lambda f: f(Y, L[:-1], R), r"^L must have 12 rows"),
    ("R columns", lambda f: f(Y, L, R[:, :-1]), r"^R must have 9 columns"),
    ("rank", lambda f: f(Y, L, R[:2]), r"^L's columns \(3\) and R's rows \(2\)"),
    ("max_iterations < 0", lambda f: f(Y, L, R, max_iterations=-1), r"^max_iterations must be >= 0"),
    ("max_iterations 2.5", lambda f: f(Y, L, R, max_iterations=2.5), r"^max_iterations must be an integer"),
    ("min_xstep < 0", lambda f: f(Y, L, R, min_xstep=-1e-9), r"^min_xstep must be"),
    ("tol NaN", lambda f: f(Y, L, R, tol=np.nan), r"^tol must be"),
    ("history_size 0", lambda f: f(Y, L, R, history_size=0), r"^history_size must be > 0"),
    ("W_0R non-square", lambda f: f(Y, L, R, W_0R=np.ones((M, M + 1))), r"^W_0R must be a square 12 x 12"),
    ("W_0R wrong size", lambda f: f(Y, L, R, W_0R=np.eye(M - 1)), r"^W_0R must be a square 12 x 12"),
    ("W_0R vector size", lambda f: f(Y, L, R, W_0R=np.ones(M + 1)), r"^W_0R as a vector .* length 12"),
    ("W_0C non-square", lambda f: f(Y, L, R, W_0C=np.ones((N + 1, N))), r"^W_0C must be a square 9 x 9"),
    ("W_0C vector size", lambda f: f(Y, L, R, W_0C=np.ones(M)), r"^W_0C as a vector .* length 9"),
    ("W_0C 3-d", lambda f: f(Y, L, R, W_0C=np.ones((N, N, 1))), r"^W_0C must be"),
    ("W_0R non-symmetric", lambda f: f(Y, L, R, W_0R=nonsym(M)), r"^W_0R must be symmetric"),
    ("W_0C non-symmetric", lambda f: f(Y, L, R, W_0C=nonsym(N)), r"^W_0C must be symmetric"),
    ("W_0R negative", lambda f: f(Y, L, R, W_0R=-np.eye(M)), r"^W_0R must be non-negative"),
    ("W_0C negative vector", lambda f: f(Y, L, R, W_0C=-np.ones(N)), r"^W_0C must be non-negative"),
    ("W_0R NaN", lambda f: f(Y, L, R, W_0R=with_(np.eye(M), (0, 0), np.nan)), r"^W_0R must be finite"),
    (
        "W_0R indefinite",
        lambda f: f(Y, L, R, W_0R=np.ones((M, M)) - np.eye(M)),
        r"^W_0R must be positive semi",
    ),
    ("W_0C negative scalar", lambda f: f(Y, L, R, W_0C=-1.0), r"^W_0C must be a finite number >= 0"),
]


@pytest.mark.parametrize("fname", list(FRONT))
@pytest.mark.parametrize("case", FACTOR_CASES, ids=[c[0] for c in FACTOR_CASES])
def test_front_doors_reject_bad_input(fname, case):
    _, call, match = case
    with pytest.raises(ValueError, match=match):
        call(FRONT[fname])


SCALAR_PENALTIES = ["lambda_1L", "lambda_1R", "lambda_2L", "lambda_2R", "gamma_2L", "gamma_2R"]


@pytest.mark.parametrize("fname", ["murnmf", "aurnmf"])
@pytest.mark.parametrize("key", SCALAR_PENALTIES)
@pytest.mark.parametrize("value", [-0.1, np.nan, np.inf])
def test_scalar_penalties_must_be_nonnegative_and_finite(fname, key, value):
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number >= 0"):
        FRONT[fname](Y, L, R, **{key: value})


@pytest.mark.parametrize("key", SCALAR_PENALTIES)
def test_scalar_penalties_must_be_scalars(key):
    with pytest.raises(ValueError, match=rf"^{key} must be a scalar"):
        jnmf.murnmf(Y, L, R, **{key: np.ones(3)})


def test_objective_rejects_unknown_and_negative_penalties():
    with pytest.raises(ValueError, match=r"^objective\(\) got an unknown argument 'lambda_3'"):
        jnmf.objective(Y, L, R, lambda_3=1.0)
    with pytest.raises(ValueError, match=r"^gamma_2R must be a finite number >= 0"):
        jnmf.objective(Y, L, R, gamma_2R=-1.0)


def test_epsilon_must_be_nonnegative():
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number >= 0"):
        jnmf.murnmf(Y, L, R, epsilon=-1e-7)


@pytest.mark.parametrize("fname", ["aurnmf", "gaurnmf"])
@pytest.mark.parametrize("tau", [0.0, 1.0, -0.5, 1.5, np.nan, np.inf])
def test_tau_in_open_unit_interval(fname, tau):
    with pytest.raises(ValueError, match=r"^tau must lie in \(0\.0, 1\.0\)"):
        FRONT[fname](Y, L, R, tau=tau)


@pytest.mark.parametrize("fname", ["aurnmf", "gaurnmf"])
@pytest.mark.parametrize("rate", [1.0, -0.01, 2.0, np.nan])
def test_annealing_rate_in_half_open_unit_interval(fname, rate):
    with pytest.raises(ValueError, match=r"^annealing_rate must lie in \[0\.0, 1\.0\)"):
        FRONT[fname](Y, L, R, annealing_rate=rate)


def test_boundary_settings_are_accepted():
    """annealing_rate = 0 (no annealing) and epsilon = 0 are valid."""
    assert np.all(np.isfinite(np.asarray(jnmf.aurnmf(Y, L, R, annealing_rate=0.0, max_iterations=5).L)))
    assert np.all(np.isfinite(np.asarray(jnmf.murnmf(Y, L, R, epsilon=0.0, max_iterations=5).L)))


@pytest.mark.parametrize("fname", ["aurnmf", "gaurnmf"])
def test_zero_tolerance_nonnegative(fname):
    with pytest.raises(ValueError, match=r"^zero_tolerance must be"):
        FRONT[fname](Y, L, R, zero_tolerance=-1.0)


GENERAL_CASES = [
    ("W_1L shape", dict(W_1L=np.ones((M, K + 1))), r"^W_1L must be a scalar or of shape \(12, 3\)"),
    ("W_1R shape", dict(W_1R=np.ones((N, K))), r"^W_1R must be a scalar or of shape \(3, 9\)"),
    ("W_1L negative scalar", dict(W_1L=-0.1), r"^W_1L must be a finite number >= 0"),
    ("W_1R negative matrix", dict(W_1R=-np.ones((K, N))), r"^W_1R must be non-negative"),
    ("W_1L NaN", dict(W_1L=with_(np.ones((M, K)), (0, 0), np.nan)), r"^W_1L must be finite"),
    ("W_2RL size", dict(W_2RL=np.eye(M + 1), W_2CL=1.0), r"^W_2RL must be a square 12 x 12"),
    ("W_2CL size", dict(W_2RL=1.0, W_2CL=np.eye(M)), r"^W_2CL must be a square 3 x 3"),
    ("W_2RR size", dict(W_2RR=np.ones(N), W_2CR=1.0), r"^W_2RR as a vector .* length 3"),
    ("W_2CR non-square", dict(W_2RR=1.0, W_2CR=np.ones((N, K))), r"^W_2CR must be a square 9 x 9"),
    ("W_2CL non-symmetric", dict(W_2RL=1.0, W_2CL=nonsym(K)), r"^W_2CL must be symmetric"),
    ("W_2RR negative", dict(W_2RR=-np.eye(K), W_2CR=1.0), r"^W_2RR must be non-negative"),
    ("W_2RL negative scalar", dict(W_2RL=-1.0, W_2CL=1.0), r"^W_2RL must be a finite number >= 0"),
    (
        "W_2 list lengths",
        dict(W_2RR=[1.0, np.eye(K)], W_2CR=[1.0]),
        r"^W_2RR and W_2CR must be lists of the same length",
    ),
    ("W_2 list item", dict(W_2RL=[1.0, 1.0], W_2CL=[np.eye(K), nonsym(K)]), r"^W_2CL\[1\] must be symmetric"),
    (
        "W_2 list item size",
        dict(W_2RR=[np.eye(K), np.eye(N)], W_2CR=[1.0, 1.0]),
        r"^W_2RR\[1\] must be a square",
    ),
]


@pytest.mark.parametrize("case", GENERAL_CASES, ids=[c[0] for c in GENERAL_CASES])
def test_gaurnmf_rejects_bad_weights(case):
    _, kw, match = case
    with pytest.raises(ValueError, match=match):
        jnmf.gaurnmf(Y, L, R, **kw)


def test_w2_need_not_be_psd():
    """The W_2 may be indefinite (the non-orthogonality weight 11' - I of eq. 4 is)."""
    res = jnmf.gaurnmf(Y, L, R, W_2RL=1.0, W_2CL=0.1 * (np.ones((K, K)) - np.eye(K)), max_iterations=5)
    assert np.all(np.isfinite(np.asarray(res.L)))


GIQPM_CASES = [
    ("G non-square", lambda: jnmf.giqpm(np.ones((8, 7)), d, x0), r"^G must be square"),
    ("G 1-d", lambda: jnmf.giqpm(np.ones(8), d, x0), r"^G must be a 2-d matrix"),
    ("G non-symmetric", lambda: jnmf.giqpm(G + np.triu(np.ones((8, 8)), 1), d, x0), r"^G must be symmetric"),
    ("G NaN", lambda: jnmf.giqpm(with_(G, (0, 0), np.nan), d, x0), r"^G must be finite"),
    ("G integer", lambda: jnmf.giqpm(np.eye(8, dtype=int), d, x0), r"^G must be a floating-point array"),
    ("G empty", lambda: jnmf.giqpm(np.zeros((0, 0)), np.zeros(0), np.zeros(0)), r"^G must not be empty"),
    ("d length", lambda: jnmf.giqpm(G, d[:-1], x0), r"^d must be a vector of length 8"),
    ("d 2-d", lambda: jnmf.giqpm(G, d[:, None], x0), r"^d must be a vector of length 8"),
    ("d NaN", lambda: jnmf.giqpm(G, with_(d, 3, np.nan), x0), r"^d must be finite"),
    ("d integer", lambda: jnmf.giqpm(G, np.ones(8, int), x0), r"^d must be a floating-point array"),
    ("x0 negative", lambda: jnmf.giqpm(G, d, with_(x0, 2, -1.0)), r"^x0 must be non-negative"),
    ("x0 inf", lambda: jnmf.giqpm(G, d, with_(x0, 2, np.inf)), r"^x0 must be finite"),
    ("x0 length", lambda: jnmf.giqpm(G, d, x0[:5]), r"^x0 must be a vector of length 8"),
    ("x0 integer", lambda: jnmf.giqpm(G, d, np.ones(8, int)), r"^x0 must be a floating-point array"),
    ("step name", lambda: jnmf.giqpm(G, d, x0, step="newton"), r"^step must be 'lee_seung'"),
    ("tau", lambda: jnmf.giqpm(G, d, x0, tau=1.0), r"^tau must lie in"),
    ("annealing_rate", lambda: jnmf.giqpm(G, d, x0, annealing_rate=1.0), r"^annealing_rate must lie in"),
    ("zero_tolerance", lambda: jnmf.giqpm(G, d, x0, zero_tolerance=-1.0), r"^zero_tolerance must be"),
    ("max_iterations", lambda: jnmf.giqpm(G, d, x0, max_iterations=-3), r"^max_iterations must be >= 0"),
]


@pytest.mark.parametrize("case", GIQPM_CASES, ids=[c[0] for c in GIQPM_CASES])
def test_giqpm_rejects_bad_input(case):
    _, call, match = case
    with pytest.raises(ValueError, match=match):
        call()


def test_giqpm_accepts_negative_G_entries_and_default_x0():
    Gn = G - 0.05 * (np.ones((8, 8)) - np.eye(8))  # still PD, some negative entries
    res = jnmf.giqpm(Gn, d, max_iterations=200)
    x = np.asarray(res.x)
    assert np.all(np.isfinite(x)) and np.all(x >= 0)


# ------------------------------------------------------- degenerate data
def degenerate(dtype):
    r = np.random.default_rng(5)
    Yd = r.random((M, N))
    Yd[2, :] = 0.0  # a zero row
    Yd[:, 4] = 0.0  # a zero column
    Ld = r.random((M, K)) + 0.1
    Ld[:, 1] = 0.0  # a zero column of L
    Rd = r.random((K, N)) + 0.1
    return Yd.astype(dtype), Ld.astype(dtype), Rd.astype(dtype)


PENALTIES = {
    "murnmf": dict(lambda_1L=0.1, lambda_2R=0.1, gamma_2L=0.05),
    "aurnmf": dict(lambda_1L=0.1, lambda_2R=0.1, gamma_2L=0.05),
    "gaurnmf": dict(W_1L=0.1, W_2RR=0.1, W_2CR=1.0),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fname", list(FRONT))
@pytest.mark.parametrize("penalized", [False, True])
def test_zero_rows_and_columns_give_finite_results(dtype, fname, penalized):
    Yd, Ld, Rd = degenerate(dtype)
    kw = PENALTIES[fname] if penalized else {}
    res = FRONT[fname](Yd, Ld, Rd, max_iterations=500, **kw)
    for X in (res.L, res.R):
        X = np.asarray(X)
        assert X.dtype == dtype
        assert np.all(np.isfinite(X)) and np.all(X >= 0)
    assert np.isfinite(float(res.objective))
    h = np.asarray(res.history)
    assert np.all(np.isfinite(h[: int(res.iterations) // int(res.history_stride)]))
    # the zero row of Y gets a (numerically) zero row of L
    assert np.max(np.asarray(res.L)[2]) <= 1e-3 * np.max(np.asarray(res.L))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fname", list(FRONT))
def test_all_zero_data_gives_finite_results(dtype, fname):
    _, Ld, Rd = degenerate(dtype)
    res = FRONT[fname](np.zeros((M, N), dtype), Ld, Rd, max_iterations=300)
    assert np.all(np.isfinite(np.asarray(res.L))) and np.all(np.isfinite(np.asarray(res.R)))
    assert np.isfinite(float(res.objective))


@pytest.mark.parametrize("name", ["W_0R", "W_1L", "W_2RL"])
def test_integer_weight_arrays_are_rejected(name):
    rng = np.random.default_rng(0)
    Y, L, R = rng.random((6, 5)), rng.random((6, 2)), rng.random((2, 5))
    bad = {"W_0R": np.eye(6, dtype=int), "W_1L": np.ones((6, 2), dtype=int), "W_2RL": np.ones(6, dtype=int)}
    kw = {name: bad[name]}
    if name == "W_2RL":
        kw["W_2CL"] = 1.0
    with pytest.raises(ValueError, match=name):
        jnmf.gaurnmf(Y, L, R, **kw)


# An unknown keyword names the function called and its close matches, before any work.
UNKNOWN_KEYWORD_CALLS = {
    "fit": lambda **kw: jnmf.fit(Y, K, **kw),
    "sweep": lambda **kw: jnmf.sweep(Y, K, {"lambda_1L": [0.0, 1.0]}, **kw),
    "programs": lambda **kw: jnmf.programs(Y, K, replicates=2, **kw),
    "differentiable_fit": lambda **kw: jnmf.differentiable_fit(Y, L, R, **kw),
    "build_problem": lambda **kw: jnmf.build_problem(Y, K, **kw),
}


@pytest.mark.parametrize("caller", sorted(UNKNOWN_KEYWORD_CALLS))
def test_unknown_keyword_names_the_function_and_close_matches(caller):
    call = UNKNOWN_KEYWORD_CALLS[caller]
    head = rf"^{caller}\(\) got an unknown argument"
    with pytest.raises(ValueError, match=rf"{head} 'lamda_1L'; did you mean 'lambda_1L'"):
        call(lamda_1L=0.5)
    # no close match: the penalty keywords are listed instead
    with pytest.raises(ValueError, match=rf"{head} 'frobnicate' \(penalty keywords: lambda_1L"):
        call(frobnicate=object())


def test_unknown_keywords_suggest_arguments_case_insensitively():
    with pytest.raises(ValueError, match=r"'max_iteration'; did you mean 'max_iterations'\?"):
        jnmf.fit(Y, K, max_iteration=3)
    with pytest.raises(
        ValueError,
        match=r"^sweep\(\) got unknown arguments 'gama_2r' \(did you mean 'gamma_2R'.*\), 'zzz'$",
    ):
        jnmf.sweep(Y, K, {"lambda_1L": [0.0]}, zzz=1, gama_2r=1.0)


def test_surfaces_without_penalty_keywords_name_themselves():
    # consensus and cross_validate_rank take no penalties: Python itself names them
    with pytest.raises(TypeError, match=r"consensus\(\) got an unexpected keyword argument 'lambda_1L'"):
        jnmf.consensus(Y, [2, 3], lambda_1L=1.0)
    with pytest.raises(TypeError, match=r"cross_validate_rank\(\) got an unexpected keyword argument"):
        jnmf.cross_validate_rank(Y, [2, 3], lambda_1L=1.0)
