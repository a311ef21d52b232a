"""Test-session setup: the repository root on sys.path, and one XLA compilation cache and one
judge folder shared by every test, every pytest-xdist worker and every subprocess a test starts
(they compile the same tiny programs and score with the same judges again and again; the caches
turn those into lookups), and XLA flags that compile fast."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Set before any test module imports jax. The process that creates the cache (pytest itself, or
# the xdist controller) owns it; workers and subprocesses inherit the variable.
_OWNED_CACHE = _OWNED_JUDGES = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWNED_CACHE = tempfile.mkdtemp(prefix="pra_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWNED_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# One folder for the digits and photos judges of every test's runs (pra_jax.metrics.scoring's
# PRA_JAX_JUDGE_CACHE): each is trained once per session, not once per workdir (30 s each).
if "PRA_JAX_JUDGE_CACHE" not in os.environ:
  _OWNED_JUDGES = tempfile.mkdtemp(prefix="pra_jax_judges_")
  os.environ["PRA_JAX_JUDGE_CACHE"] = _OWNED_JUDGES

# Compile speed over run speed: the tests' programs are tiny, and XLA:CPU spends most of a test
# compiling them with LLVM (a train step of the tiny config: 23 s at the default level, 11 s at
# 0). These flags set LLVM's effort only; XLA's own passes, which tests read in the compiled
# HLO, run as before. Every process a test starts inherits them; one that sets XLA_FLAGS itself
# appends to them.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if FAST_XLA not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_XLA).strip()


def pytest_unconfigure(config):
  if not hasattr(config, "workerinput"):
    for owned in (_OWNED_CACHE, _OWNED_JUDGES):
      if owned:
        shutil.rmtree(owned, ignore_errors=True)


# The longest files first (measured with --durations): pytest-xdist hands whole files to the
# worker that frees up, so a long file started last would leave the other core idle at the end.
_LONG_FIRST = ("test_benchmarks.py", "test_survival.py", "test_ablate.py", "test_sharding.py",
               "test_multiprocess.py", "test_sample.py", "test_train.py", "test_plan.py")


def pytest_collection_modifyitems(session, config, items):
  rank = lambda item: (_LONG_FIRST.index(item.path.name) if item.path.name in _LONG_FIRST
                       else len(_LONG_FIRST))
  items.sort(key=rank)  # Stable: order within a file, and among the rest, is kept.
