"""How often does ``jnmf.cross_validate_rank`` pick the true rank?  (issue 15, part 4)

Synthetic ``100 x 80`` data of rank r (3, 6, 9) with noise (2% and 5%), several data
seeds and CV keys; for each scheme and setting it counts the picks at r - 2 .. r + 2
(both rules, ``"1se"`` and ``"min"``, from the same fits).  The ranks compared are
``r - 3 .. r + 3`` (at least 1), so each (r, setting) compiles one program, reused over
seeds and keys.

Data: ``--data abs`` (default) is the issue's generator (``experiments/new_user_edges.py``'s
``low_rank``: uniform factors, plus ``noise * std(Y) * |z|``); ``--data gauss`` the tests'
(``tests/test_cross_validation.py``: ``max(0, truth + noise * mean(truth) * z)``).

Settings (``--configs``, each a name below): ``speckled`` and ``bicv`` with the
defaults (bicv's extension ``"pinv"``), ``bicv-nnls`` (the NNLS extension, jnmf's old
default), and candidates on top of a scheme: ``-r4`` / ``-r8`` restarts, ``-rep5``
repeats, ``-long`` (``max_iterations=6000, tol=1e-7``), ``-anls`` / ``-ahals`` (the
fitting method; jnmf's default for CV is ``"anls"`` since issue 15, ``"ahals"`` before).

    python experiments/cv_rank_accuracy.py                      # ~2 min on 2 cores (108 s, load 5)
    python experiments/cv_rank_accuracy.py --seeds 10 --keys 2  # the full table
    python experiments/cv_rank_accuracy.py --configs speckled speckled-long speckled-rep5
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import jnmf  # noqa: E402
from jnmf.cross_validation import select_rank  # noqa: E402

CANDIDATES = {
    "r4": dict(restarts=4),
    "r8": dict(restarts=8),
    "rep5": dict(repeats=5),
    "long": dict(max_iterations=6000, tol=1e-7),
    "anls": dict(method="anls"),
    "ahals": dict(method="ahals"),
}


def settings(name: str) -> dict:
    """``cross_validate_rank`` keyword arguments of a setting name (see the docstring)."""
    scheme, *extra = name.split("-")
    kw: dict = dict(scheme=scheme)
    for part in extra:
        if part == "nnls":
            kw["extension"] = "nnls"
        elif part in CANDIDATES:
            kw.update(CANDIDATES[part])
        else:
            raise ValueError(f"unknown setting part {part!r} in {name!r}")
    return kw


def data(r: int, noise: float, seed: int, kind: str) -> np.ndarray:
    """A 100 x 80 non-negative matrix of rank r plus noise (see the module docstring)."""
    rng = np.random.default_rng(1000 * r + seed)
    truth = rng.random((100, r)) @ rng.random((r, 80))
    if kind == "abs":
        return truth + noise * truth.std() * np.abs(rng.standard_normal(truth.shape))
    return np.maximum(truth + noise * truth.mean() * rng.standard_normal(truth.shape), 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 6, 9])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--data", choices=("abs", "gauss"), default="abs")
    parser.add_argument("--configs", nargs="+", default=["speckled", "bicv", "bicv-nnls"])
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}, data {args.data}, "
        f"ranks {args.ranks}, noise {args.noise}, {args.seeds} seeds x {args.keys} keys"
    )
    picks = collections.defaultdict(collections.Counter)  # (config, rule) -> Counter of pick - r
    cpu = collections.Counter()
    for config in args.configs:
        kw = settings(config)
        for r in args.ranks:
            ranks = range(max(1, r - 3), r + 4)
            for noise in args.noise:
                for seed in range(args.seeds):
                    Y = data(r, noise, seed, args.data)
                    for key in range(args.keys):
                        t0 = time.process_time()
                        cv = jnmf.cross_validate_rank(Y, ranks, key=key, **kw)
                        cpu[config] += time.process_time() - t0
                        for rule in ("1se", "min"):
                            off = select_rank(cv.ranks, cv.test_error, rule) - r
                            picks[config, rule][off] += 1
                            picks[config, rule, r][off] += 1
        exact = " ".join(
            f"{picks[config, '1se', r][0]}/{sum(picks[config, '1se', r].values())}" for r in args.ranks
        )
        print(
            f"  {config}: done, {cpu[config]:.0f} s CPU, load {os.getloadavg()[0]:.1f}; "
            f"1se exact per r: {exact}",
            flush=True,
        )

    offsets = [-2, -1, 0, 1, 2]
    head = "  ".join(f"{o:+d}" if o else " r" for o in offsets)
    print("\npicks relative to the true rank (counts over ranks x noise x seeds x keys)\n")
    print(
        f"{'setting':<18} {'rule':<4}  {head}  other  exact   exact per r ({', '.join(map(str, args.ranks))})"
    )
    for config in args.configs:
        for rule in ("1se", "min"):
            c = picks[config, rule]
            total = sum(c.values())
            cells = "  ".join(f"{c[o]:>2d}" for o in offsets)
            other = total - sum(c[o] for o in offsets)
            per_r = " ".join(
                f"{picks[config, rule, r][0]}/{sum(picks[config, rule, r].values())}" for r in args.ranks
            )
            print(f"{config:<18} {rule:<4}  {cells}  {other:>5d}  {c[0] / total:5.0%}   {per_r}")
    print(
        "\nCPU seconds per setting (compiles included): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    )
    print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
