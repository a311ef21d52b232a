"""pra_jax: Parallel Rollout Approximation for pixel-space autoregressive image generation."""

__version__ = "0.1.0"
