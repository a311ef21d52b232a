"""Puts the repository root on sys.path so `import pra_jax` works without installing it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
