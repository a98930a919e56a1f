"""The edges a new user hit (issue 15, part 4), tried again as a new user would.

Each check runs the user's own line and prints what happened: the value, the error
message, or the time.  Nothing here is asserted (the tests do that:
tests/test_validation.py, test_autodiff.py, test_fit.py, test_estimator.py,
test_cli.py, test_cross_validation.py, test_readme.py); this script is the record of
what a user sees today, for the closing note.

    python experiments/new_user_edges.py            # about a minute on 2 cores
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jnmf  # noqa: E402


def show(title: str, fn) -> None:
    """Run one user line; print its outcome (value or the exception's first line)."""
    t0 = time.perf_counter()
    try:
        out = fn()
        outcome = f"ok: {out}"
    except Exception as err:  # the message is what the user reads
        outcome = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        if not isinstance(err, ValueError):
            traceback.print_exc(limit=2)
    print(f"- {title} [{time.perf_counter() - t0:.2f} s]\n    {outcome}")


def low_rank(m: int, n: int, k: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = rng.random((m, k)) @ rng.random((k, n))
    return Y + noise * Y.std() * np.abs(rng.standard_normal((m, n)))


def main() -> None:
    print(f"jnmf {jnmf.__version__}, jax {jax.__version__}, load {os.getloadavg()[0]:.1f}")
    Y = low_rank(60, 40, 4, 0.02)

    show(
        "jax.grad(lambda lam: jnmf.fit(Y, 4, lambda_2L=lam).L.sum())(0.3)",
        lambda: jax.grad(lambda lam: jnmf.fit(Y, 4, lambda_2L=lam).L.sum())(0.3),
    )
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            res = jnmf.fit(Y, 4)
            show(
                'p = res.save("fit"); jnmf.load("fit")',
                lambda: (str(res.save("fit")), type(jnmf.load("fit")).__name__),
            )
        finally:
            os.chdir(cwd)
    show("jnmf.fit(Y, 4, mseh=None)  (a typo)", lambda: jnmf.fit(Y, 4, mseh=None))
    show("jnmf.fit(Y, 4, lamda_1L=0.1)  (a typo)", lambda: jnmf.fit(Y, 4, lamda_1L=0.1))

    rng = np.random.default_rng(1)
    L0 = rng.random((5, 60, 4))
    R0 = rng.random((5, 4, 40))
    show(
        "fit(init=(L0 stack, R0 stack), restarts=5, max_iterations=1): distinct restarts",
        lambda: (
            np.unique(
                np.asarray(
                    jnmf.fit(Y, 4, init=(L0, R0), restarts=5, max_iterations=1, return_all=True).objectives
                )
            ).size
        ),
    )

    Y6 = low_rank(100, 80, 6, 0.02, seed=3)
    for scheme in ("speckled", "bicv"):
        show(
            f"cross_validate_rank(rank-6 100x80, 2% noise, ranks 3-9, scheme={scheme!r}).selected_rank",
            lambda s=scheme: jnmf.cross_validate_rank(Y6, range(3, 10), scheme=s, key=0).selected_rank,
        )

    from sklearn.decomposition import NMF as SkNMF

    X = low_rank(200, 120, 8, 0.3, seed=4)
    for solver in ("cd", "mu"):
        settings = dict(solver=solver, init="nndsvda", max_iter=400, tol=1e-4, random_state=0)
        sk, jn = SkNMF(8, **settings).fit(X), jnmf.NMF(8, **settings).fit(X)
        print(
            f"- NMF(solver={solver!r}) stopping, scikit-learn vs jnmf: iterations {sk.n_iter_} vs "
            f"{jn.n_iter_}, error {sk.reconstruction_err_:.4f} vs {jn.reconstruction_err_:.4f}"
        )
    X2 = low_rank(500, 300, 10, 0.3, seed=5)
    for name, model in (("jnmf.NMF", jnmf.NMF), ("scikit-learn NMF", SkNMF)):
        t0 = time.perf_counter()
        model(10, random_state=0, max_iter=200).fit(X2)
        print(f"- first {name}(10).fit of a new 500 x 300 shape: {time.perf_counter() - t0:.2f} s")
    Xn = X.copy()
    Xn[rng.random(X.shape) < 0.1] = np.nan
    show(
        "jnmf.NMF(8, missing='nan').fit(X with 10% NaN).reconstruction_err_",
        lambda: jnmf.NMF(8, missing="nan").fit(Xn).reconstruction_err_,
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "y.csv.gz")
        np.savetxt(path, X[:40, :30], delimiter=",")
        cli = [sys.executable, "-m", "jnmf"]

        def run(*args):
            t0 = time.perf_counter()
            p = subprocess.run(cli + list(args), capture_output=True, text=True, cwd=tmp)
            last = (p.stdout.strip().splitlines() or [""])[-1] + (p.stderr.strip().splitlines() or [""])[-1]
            return f"exit {p.returncode} in {time.perf_counter() - t0:.1f} s: {last[:200]}"

        show("jnmf fit y.csv.gz --rank 3 --out res", lambda: run("fit", path, "--rank", "3", "--out", "res"))
        show(
            "jnmf fit y.csv.gz --rank 3 --out /proc/nope (unwritable)",
            lambda: run("fit", path, "--rank", "3", "--out", "/proc/nope"),
        )
        show(
            "jnmf fit y.txt --rank 3 --out res (exists, and an unsupported type)",
            lambda: run("fit", "y.txt", "--rank", "3", "--out", "res"),
        )


if __name__ == "__main__":
    main()
