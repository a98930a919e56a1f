"""Simulated single-cell counts with known gene-expression programs (fixed seed).

The kind of simulation Kotliar et al. (eLife 2019) used to test cNMF (theirs was built
with Splatter, Zappia et al. 2017): every cell has one *identity* program (its cell
type) and some cells also run an *activity* program, at a usage drawn per cell.

* Gene base means: gamma(shape 0.6, scale 1/0.3) (Splatter's default shape/rate).
* Each program (identity or activity) changes a fraction ``de_fraction`` of the
  genes by a log-normal fold change (log mean ``de_location``, log sd ``de_scale``),
  up or down with equal odds for identity programs, up only for activity programs.
  Program ``p``'s expression profile is ``base * foldchange_p``, normalised to sum 1.
* Cell ``c``: identity ``t`` uniformly among ``identities``; with probability
  ``activity_fraction`` also one activity program ``a`` with usage ``u ~ U(0.1, 0.7)``.
  Its mean profile is ``(1 - u) profile_t + u profile_a``.
* Library sizes: log-normal (log mean ``library_location``, log sd ``library_scale``).
* Counts: negative binomial (gamma-Poisson) around ``library * profile`` with
  biological coefficient of variation ``bcv`` (``bcv=0``: Poisson).

``simulate(...)`` returns the counts (cells x genes, int32), the true usages
(cells x programs, rows sum to 1) and the true profiles (programs x genes, rows sum
to 1).  ``python experiments/simulate_counts.py OUT.npz`` writes them.
"""

from __future__ import annotations

import argparse

import numpy as np


def simulate(
    cells: int = 3000,
    genes: int = 2000,
    identities: int = 7,
    activities: int = 2,
    *,
    activity_fraction: float = 0.3,
    de_fraction: float = 0.025,
    de_location: float = 1.0,
    de_scale: float = 0.5,
    library_location: float = 8.0,
    library_scale: float = 0.3,
    bcv: float = 0.1,
    seed: int = 14,
) -> dict[str, np.ndarray]:
    """Counts with ``identities + activities`` known programs.

    Args:
        cells, genes: the matrix's shape (cells x genes, AnnData orientation).
        identities: cell types (one identity program per cell).
        activities: activity programs (at most one per cell).
        activity_fraction: fraction of cells running an activity program.
        de_fraction, de_location, de_scale: the differentially expressed genes per
            program and their log-normal fold changes.
        library_location, library_scale: the log-normal library sizes.
        bcv: biological coefficient of variation of the negative binomial (0: Poisson).
        seed: the seed of the NumPy generator.

    Returns:
        ``counts`` (cells x genes, int32), ``usages`` (cells x programs), ``profiles``
        (programs x genes), ``identity`` (cells), ``library`` (cells).
    """
    rng = np.random.default_rng(seed)
    programs = identities + activities
    base = rng.gamma(0.6, 1 / 0.3, size=genes) + 1e-3
    fold = np.ones((programs, genes))
    n_de = max(1, int(round(de_fraction * genes)))
    for p in range(programs):
        de = rng.choice(genes, n_de, replace=False)
        change = rng.lognormal(de_location, de_scale, size=n_de)
        if p < identities:
            down = rng.random(n_de) < 0.5
            change = np.where(down, 1 / change, change)
        fold[p, de] = change
    profiles = base * fold
    profiles /= profiles.sum(axis=1, keepdims=True)

    identity = rng.integers(0, identities, size=cells)
    usages = np.zeros((cells, programs))
    usages[np.arange(cells), identity] = 1.0
    active = rng.random(cells) < activity_fraction
    which = identities + rng.integers(0, activities, size=cells)
    u = rng.uniform(0.1, 0.7, size=cells)
    rows = np.flatnonzero(active)
    usages[rows, identity[rows]] = 1 - u[rows]
    usages[rows, which[rows]] = u[rows]

    library = rng.lognormal(library_location, library_scale, size=cells)
    mean = library[:, None] * (usages @ profiles)
    if bcv > 0:
        shape = 1 / bcv**2
        mean = rng.gamma(shape, mean / shape)
    counts = rng.poisson(mean).astype(np.int32)
    return {
        "counts": counts,
        "usages": usages,
        "profiles": profiles,
        "identity": identity,
        "library": library,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    sim = simulate(args.cells, args.genes, seed=args.seed)
    np.savez_compressed(args.out, **sim)
    c = sim["counts"]
    print(
        f"{args.out}: {c.shape[0]} cells x {c.shape[1]} genes, {np.mean(c > 0):.0%} non-zero, "
        f"{sim['profiles'].shape[0]} programs, median library {np.median(c.sum(1)):.0f}"
    )


if __name__ == "__main__":
    main()
