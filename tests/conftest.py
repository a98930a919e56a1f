"""Shared test configuration.

* JAX's 64-bit mode is switched on here, once, at import time (before any test module
  creates an array): the exactness tests (autodiff, the rnnmf reference, batched vs
  unbatched fits) run in float64.  Float32 robustness tests build float32 arrays
  explicitly; float32 inputs stay float32 (the fit dtype is the inputs' dtype).
* Hypothesis runs derandomized: CI sees the same (varied) examples on every run.
"""

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
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module (modules share their compiled
    functions within themselves, rarely across).  One process that kept every program
    of the whole suite crashed inside XLA's CPU compiler late in the run; releasing them
    keeps each process's compiler state small."""
    yield
    jax.clear_caches()
