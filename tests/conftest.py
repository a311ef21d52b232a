"""Test-session setup: the repository root on sys.path, and one XLA compilation cache shared by
every test and every subprocess a test starts (they compile the same tiny programs again and
again; the cache turns those recompiles into lookups)."""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Set before any test module imports jax; subprocesses inherit the environment.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="pra_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
