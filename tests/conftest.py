"""Shared test configuration.

* JAX's 64-bit mode is switched on here, once, at import time (before any test module
  creates an array): the exactness tests (autodiff, the rnnmf reference, batched vs
  unbatched fits) run in float64.  Float32 robustness tests build float32 arrays
  explicitly; float32 inputs stay float32 (the fit dtype is the inputs' dtype).
* Hypothesis runs derandomized: CI sees the same (varied) examples on every run.
"""

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("jnmf", derandomize=True, deadline=None)
settings.load_profile("jnmf")
