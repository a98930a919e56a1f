"""The method names and default settings the command line shows, without JAX.

``jnmf --help`` and every usage check of ``jnmf fit`` / ``rank`` / ``demo`` / ``programs``
need the method names and the defaults, but not the solvers: reading them from here lets
the command line check its arguments before it imports JAX and the rest of jnmf (issue 15:
a usage error took 1.2-1.4 s to print one line).  The solver modules take their names and
defaults from here too (:data:`jnmf.rules.METHODS`, :class:`jnmf.driver.Stopping`,
:mod:`jnmf.programs`), so there is one copy of each.  This module imports nothing.
"""

from __future__ import annotations

# The method registry's names and descriptions, in the order the CLI lists them;
# jnmf.rules.METHODS pairs each with its rule's factory.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "ahals": (
        "accelerated HALS (Gillis & Glineur 2012) with extrapolation (Ang & Gillis 2019) where"
        " supported (not with an elementwise weight M or missing values: there plain ahals)"
    ),
    "ahals-plain": (
        "accelerated HALS (Gillis & Glineur 2012) without extrapolation: repeated sweeps while they pay"
    ),
    "hals": "HALS (Cichocki & Phan 2009), one column sweep per half step",
    "mu": "multiplicative update (Lee & Seung 2001; MURNMF, Pav 2024 Alg. 1)",
    "au": "additive update with optimal step (AURNMF/GAURNMF, Pav 2024 Alg. 3)",
    "anls": "alternating non-negative least squares, exact NNLS half steps (Kim & Park 2011)",
    "kl": "KL-divergence multiplicative update (Lee & Seung 2001)",
    "beta": "beta-divergence multiplicative update (Févotte & Idier 2011), beta=1.5; BetaMU(beta) for others",
    "pg": "projected gradient driven by an optax optimizer (default adam(1e-2))",
}
DEFAULT_METHOD = "ahals"

# jnmf.driver.Stopping's defaults: the iteration cap and the relative objective change
# (scikit-learn's tol)
DEFAULT_MAX_ITERATIONS = 1000
DEFAULT_TOL = 1e-4

# jnmf.programs' replicates (see that module's docstring for the measurement):
# accelerated HALS stopped on the relative change of the factors
PROGRAMS_METHOD = "ahals"
PROGRAMS_TOL = 0.0
PROGRAMS_REL_TOL = 1e-4
PROGRAMS_MAX_ITERATIONS = 1000
