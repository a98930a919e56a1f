"""Shared test configuration.

* JAX's 64-bit mode is switched on here, once, at import time (before any test module
  creates an array): the exactness tests (autodiff, the rnnmf reference, batched vs
  unbatched fits) run in float64.  Float32 robustness tests build float32 arrays
  explicitly; float32 inputs stay float32 (the fit dtype is the inputs' dtype).
* Hypothesis runs derandomized: CI sees the same (varied) examples on every run.
* A module whose time is compiling (tiny problems, a few iterations) sets
  ``CHEAP_PROGRAMS = True``: its programs compile with ``jax_disable_most_optimizations``
  (LLVM's optimization level 0 and its expensive passes off; XLA's HLO passes run as
  always), which took a quarter of test_missing.py's and test_sparse.py's CPU time off.
  Unoptimized code runs slower (the speckled cross-validation test took twice the CPU),
  so a test of such a module whose time is running fits is marked
  ``@pytest.mark.optimized_programs``.  ``JNMF_TEST_OPTIMIZED=1`` compiles every program
  as users get them.
"""

import os

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("jnmf", derandomize=True, deadline=None)
settings.load_profile("jnmf")


@pytest.fixture(autouse=True)
def _no_persistent_compile_cache(monkeypatch):
    """In-process CLI calls must not point this pytest process's JAX compilation cache at a
    directory (a tmp_path that is deleted after its test, or the user's ~/.cache):
    the cache is process-wide, and JAX crashed writing into a removed directory.  Tests
    of the cache run the CLI in subprocesses with their own environment."""
    monkeypatch.setenv("JNMF_NO_COMPILE_CACHE", "1")
    before = jax.config.jax_compilation_cache_dir
    yield
    if jax.config.jax_compilation_cache_dir != before:
        jax.config.update("jax_compilation_cache_dir", before)
        from jax._src import compilation_cache

        compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _compile_effort(request):
    """Cheap compiles in the modules that ask for them (module docstring).  The flag is
    read at each compile, not part of JAX's cache key: the programs of one module are
    released before the next module sets it (``_release_compiled_programs``)."""
    cheap = getattr(request.module, "CHEAP_PROGRAMS", False) and os.environ.get("JNMF_TEST_OPTIMIZED") != "1"
    jax.config.update("jax_disable_most_optimizations", cheap)
    yield


@pytest.fixture(autouse=True)
def _optimized_for_marked_tests(request):
    """A test marked ``optimized_programs`` compiles as users get them (module docstring).
    The flag is not part of JAX's cache key, so in a cheap module the programs compiled
    so far are dropped before and after the test: it never runs (or compares against)
    one compiled unoptimized, and the module's later tests not one of its programs."""
    if request.node.get_closest_marker("optimized_programs") is None:
        yield
        return
    before = jax.config.read("jax_disable_most_optimizations")
    if before:
        jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
    if before:
        jax.clear_caches()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module (modules share their compiled
    functions within themselves, rarely across).  One process that kept every program
    of the whole suite crashed inside XLA's CPU compiler late in the run; releasing them
    keeps each process's compiler state small."""
    yield
    jax.clear_caches()


# The modules with the longest tests (a CI run's ``--durations``: test_mesh's subprocess
# 123 s, test_readme 104 s, test_mesh_batch 73 s, ...), collected first.  Under
# ``--dist loadfile`` pytest-xdist hands whole modules to its workers in collection
# order, so a long module collected late keeps one worker busy after the others are done.
LONG_MODULES_FIRST = (
    "test_mesh.py",
    "test_readme.py",
    "test_mesh_batch.py",
    "test_sparse_cv.py",
    "test_estimator.py",
    "test_implicit.py",
    "test_fit.py",
    "test_cross_validation.py",
    "test_multiprocess.py",
    "test_keep.py",
    "test_sparse.py",
    "test_slots.py",
)


def pytest_collection_modifyitems(config, items):
    """Long modules first (``LONG_MODULES_FIRST``), the rest in their usual order."""
    place = {name: i for i, name in enumerate(LONG_MODULES_FIRST)}
    items.sort(key=lambda item: place.get(item.path.name, len(place)))
