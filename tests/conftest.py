"""Hypothesis runs derandomized: CI sees the same (varied) examples on every run."""

from hypothesis import settings

settings.register_profile("jnmf", derandomize=True, deadline=None)
settings.load_profile("jnmf")
