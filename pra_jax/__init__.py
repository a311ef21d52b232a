"""pra_jax: Parallel Rollout Approximation for pixel-space autoregressive image generation."""

import os

# Before anything imports TensorFlow (CLU's writers, TFDS): its C++ banners say nothing about
# a pra_jax run. TensorFlow only writes summaries and reads datasets here, so its oneDNN
# kernels (whose banner no log level hides) buy nothing. Explicit settings are kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
