"""jnmf: regularized non-negative matrix factorization as composable JAX functions.

Layers (each imports only those below it): problem -> quadratic -> rules ->
driver -> implicit -> batch -> surfaces (``fit``, ``sweep``, ``consensus``, ``programs``,
the rnnmf front doors, the CLI).  The top level holds what users call; building blocks stay in their
modules (:mod:`jnmf.problem`, :mod:`jnmf.quadratic`, :mod:`jnmf.rules`,
:mod:`jnmf.driver`, :mod:`jnmf.batch`, :mod:`jnmf.init`).

``jnmf.NMF`` is the scikit-learn drop-in estimator (:mod:`jnmf.estimator`); it is
imported on first use, so ``import jnmf`` works without scikit-learn.
"""

import importlib
import sys
import types

# Public name -> the module it comes from.  Nothing is imported until a name is first
# used (PEP 562 ``__getattr__``): ``import jnmf`` is cheap, and the command line checks its
# arguments before JAX is imported (issue 15).  The first use of any of these names
# imports all of them, as an eager ``import jnmf`` did.
_EXPORTS = {
    "enable_compile_cache": "compile_cache",
    "Consensus": "consensus",
    "consensus": "consensus",
    "RankCV": "cross_validation",
    "cross_validate_rank": "cross_validation",
    "load_golub": "datasets",
    "load_orl_faces": "datasets",
    "STATUS": "driver",
    "Result": "driver",
    "Stopping": "driver",
    "iterate": "driver",
    "ConvergenceWarning": "fitting",
    "FitResult": "fitting",
    "SweepResult": "fitting",
    "fit": "fitting",
    "sweep": "fitting",
    "GIQPM": "giqpm",
    "differentiable_fit": "implicit",
    "Problem": "problem",
    "build_problem": "problem",
    "Programs": "programs",
    "ProgramsAtRank": "programs",
    "programs": "programs",
    "load": "result_files",
    "aurnmf": "rnnmf",
    "gaurnmf": "rnnmf",
    "giqpm": "rnnmf",
    "murnmf": "rnnmf",
    "objective": "rnnmf",
    "ANLS": "rules",
    "AURNMF": "rules",
    "HALS": "rules",
    "KLMU": "rules",
    "METHODS": "rules",
    "MURNMF": "rules",
    "BetaMU": "rules",
    "ProjectedGradient": "rules",
    "make_rule": "rules",
    "fit_stream": "streaming",
}
# the scikit-learn drop-ins: their own modules, imported on their own (scikit-learn is optional)
_ESTIMATORS = {"NMF": "estimator", "MiniBatchNMF": "minibatch"}


def _load_all() -> None:
    """Import every public name into the package, in the order an eager import did."""
    package = sys.modules[__name__]
    for name, module in _EXPORTS.items():
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        types.ModuleType.__setattr__(package, name, value)


def __getattr__(name: str):
    """The public names, imported on first use; the submodules (``jnmf.rules``, ...) too;
    ``jnmf.NMF`` and ``jnmf.MiniBatchNMF`` need scikit-learn, an optional dependency."""
    if name in _EXPORTS:
        _load_all()
        return globals()[name]
    if name in _ESTIMATORS:
        try:
            value = getattr(importlib.import_module(f".{_ESTIMATORS[name]}", __name__), name)
        except ImportError as e:
            raise ImportError(
                f"jnmf.{name} (the scikit-learn drop-in estimator) needs scikit-learn "
                f"(pip install scikit-learn): {e}"
            ) from e
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'jnmf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_ESTIMATORS))


class _Package(types.ModuleType):
    """The package's module type: importing a submodule whose name is also a public
    function (``jnmf.consensus``, ``jnmf.programs``, ``jnmf.giqpm``) does not hide the
    function, whichever is imported first (Python sets the submodule as the package's
    attribute on its first import)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return  # the public name wins; the module stays in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    # surfaces
    "fit",
    "sweep",
    "fit_stream",
    "differentiable_fit",
    "consensus",
    "programs",
    "cross_validate_rank",
    "RankCV",
    "load_golub",
    "load_orl_faces",
    # keeping results and compiled programs
    "load",
    "enable_compile_cache",
    # rnnmf front doors (Pav 2024)
    "murnmf",
    "aurnmf",
    "gaurnmf",
    "giqpm",
    "objective",
    # the problem, rules and driver
    "Problem",
    "build_problem",
    "METHODS",
    "make_rule",
    "HALS",
    "MURNMF",
    "AURNMF",
    "ANLS",
    "KLMU",
    "BetaMU",
    "ProjectedGradient",
    "GIQPM",
    "iterate",
    "Stopping",
    "STATUS",
    # results and warnings
    "Result",
    "FitResult",
    "SweepResult",
    "Consensus",
    "Programs",
    "ProgramsAtRank",
    "ConvergenceWarning",
]
__version__ = "0.2.0"
