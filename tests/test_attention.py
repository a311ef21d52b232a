"""model.backbone.attention: the kernel chosen is the one the training pass calls, KV-cached
decoding stays on XLA's attention, a kernel the platform lacks is refused with one clear
message, and the splash kernel (in Pallas interpret mode on CPU) matches XLA's attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import factories as F
from pra_jax import config_check
from pra_jax.models import attention, pra


def _on(monkeypatch, platform, version=""):
  monkeypatch.setattr(attention, "_platform", lambda: (platform, version))


# -- the clear errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("choice,platform,overrides,match", [
    ("cudnn", None, {}, "needs an NVIDIA GPU, but this platform is 'cpu'"),
    ("splash", None, {}, "is a TPU kernel, but this platform is 'cpu'"),
    ("cudnn", ("gpu", "rocm 6.2"), {"model.backbone.dtype": "bfloat16"}, "needs an NVIDIA GPU"),
    ("cudnn", ("gpu", "cuda 12.8"), {}, "runs in bfloat16 or float16, but model.backbone.dtype"),
    ("cudnn", ("gpu", "cuda 12.8"),
     {"model.backbone.dtype": "bfloat16", "model.backbone.num_heads": 8}, "head dim that is a"),
    ("splash", ("tpu", ""), {}, "multiple of 128, but class tokens \\+ patches - 1 = 16"),
    ("flash", None, {}, "attention='flash' is not one of"),
])
def test_unavailable_kernels_are_refused_before_compiling(monkeypatch, choice, platform,
                                                          overrides, match):
  if platform is not None:
    _on(monkeypatch, *platform)
  config = F.tiny_config(**{"model.backbone.attention": choice, **overrides})
  with pytest.raises(ValueError, match=match):
    config_check.validate(config)
  with pytest.raises(ValueError, match=match):  # Building the model checks too (sampling, probe).
    pra.abstract_model(config)


def test_xla_needs_nothing():
  config_check.validate(F.tiny_config(**{"model.backbone.attention": "xla"}))


# -- routing --------------------------------------------------------------------------------------


def test_training_pass_uses_the_chosen_kernel_and_decoding_uses_xla(monkeypatch):
  """attention='cudnn' on a (pretended) NVIDIA GPU: the teacher-forced pass calls the cudnn
  entry once per traced layer stack; prefill and step never do, and still match the pass."""
  _on(monkeypatch, "gpu", "cuda 12.8")
  calls = []

  def fake_cudnn(q, k, v):
    calls.append(q.shape)
    return attention.xla(q, k, v)

  monkeypatch.setitem(attention.KERNELS, "cudnn", fake_cudnn)
  config = F.tiny_config(**{"model.backbone.attention": "cudnn",
                            "model.backbone.dtype": "bfloat16"})
  bb = F.random_model(config).backbone
  b, h, k = 2, config.model.backbone.num_heads, 16
  x_BIP = jax.random.uniform(jax.random.key(0), (b, bb.num_patches - 1, 16), minval=-1, maxval=1)
  y_B = jnp.array([3, 7])
  full = F.jit(lambda bb, x, y: bb(x, y))(bb, x_BIP, y_B)
  assert calls == [(b, bb.cache_len, h, k)]  # One trace of the scanned block.

  calls.clear()

  @F.jit
  def decode(bb, x_BIP, y_B):
    h0, cache = bb.prefill(y_B, bb.init_cache(b))
    h1, cache = bb.step(x_BIP[:, 0], 0, cache)
    h2, _ = bb.step(x_BIP[:, 1], 1, cache)
    return jnp.stack([h0, h1, h2], axis=1)

  cached = decode(bb, x_BIP, y_B)
  assert calls == []
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full[:, :3]), atol=0.05)  # bf16


# -- splash against XLA ---------------------------------------------------------------------------


@functools.cache
def _splash_vs_xla():
  """Backbone outputs and parameter gradients with splash (interpreted) and with XLA attention.

  Patches of one pixel make 256 patches: 1 class token + 255 inputs = 256 tokens, two splash
  tiles of 128, so the causal mask has a skipped block, a full block and diagonal blocks.
  """
  out = {}
  for choice in ("xla", "splash"):
    config = F.tiny_config(**{"model.patch_size": 1, "model.backbone.attention": choice})
    bb = F.random_model(config).backbone  # Same seed, same parameters for both choices.
    x_BIP = jax.random.uniform(jax.random.key(1), (1, 255, 1), minval=-1, maxval=1)
    y_B = jnp.array([3])
    graphdef, params, rest = nnx.split(bb, nnx.Param, ...)

    def objective(params, x, y):
      h = nnx.merge(graphdef, params, rest)(x, y)
      return jnp.sum(jnp.sin(h)), h

    (_, h), grads = F.jit(jax.value_and_grad(objective, has_aux=True))(params, x_BIP, y_B)
    out[choice] = (np.asarray(h), F.flat_params(grads))
  return out


def test_splash_matches_xla_in_interpret_mode(monkeypatch):
  _on(monkeypatch, "tpu")  # Past the platform check; off TPU the kernel is interpreted.
  out = _splash_vs_xla()
  (h_xla, g_xla), (h_splash, g_splash) = out["xla"], out["splash"]
  assert h_splash.shape == (1, 256, 32)
  np.testing.assert_allclose(h_splash, h_xla, rtol=0, atol=1e-5)
  for path, g in g_xla.items():
    g, g_s = np.asarray(g), np.asarray(g_splash[path])
    # float32 sums in another order: relative to the leaf's largest entry.
    assert np.abs(g_s - g).max() <= 1e-5 * np.abs(g).max(), (path, np.abs(g_s - g).max(),
                                                              np.abs(g).max())
