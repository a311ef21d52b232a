"""Tests of the input modes: each runs, its losses are finite, and gradients reach what they should.

Head-loss and reconstruction-loss gradients are taken apart (weights (1, 0) and (0, 1) on one
compiled function per mode): (1, 0) is the training loss with loss.recon_weight = 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import factories as F
from pra_jax import loss, rollout, sampler

HEAD_ONLY, RECON_ONLY = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])

# (case id, config overrides, does the head loss reach E and G?); None: direct_pixel has no E, G.
# head_sample and exact run with stop_gradient=False, so only their own stop can block gradient.
CASES = [
    ("teacher", {"rollout.mode": "teacher"}, False),
    ("pixel_noise", {"rollout.mode": "pixel_noise"}, False),
    ("recon", {"rollout.mode": "recon"}, False),
    ("pra", {"rollout.mode": "pra"}, False),   # The tiny default: stop_gradient=True.
    ("pra_no_stop", {"rollout.mode": "pra", "rollout.stop_gradient": False}, True),
    # A context-aware decoder reads h_i: the reconstruction loss must still not train the
    # backbone through it (the head loss alone does, as with decoder_context off).
    ("recon_context", {"rollout.mode": "recon", "model.state.decoder_context": True}, False),
    ("pra_context", {"rollout.mode": "pra", "model.state.decoder_context": True}, False),
    ("head_sample", {"rollout.mode": "head_sample", "rollout.stop_gradient": False}, False),
    ("exact", {"rollout.mode": "exact", "rollout.stop_gradient": False}, False),
    ("direct_teacher", {"rollout.mode": "teacher", "model.direct_pixel": True}, None),
    ("direct_pixel_noise", {"rollout.mode": "pixel_noise", "model.direct_pixel": True}, None),
    ("direct_head_sample", {"rollout.mode": "head_sample", "model.direct_pixel": True,
                            "rollout.stop_gradient": False}, None),
]


@pytest.fixture(scope="module")
def batch():
  return F.digits_batch()


def _norms(grads, component):
  """{path: |grad|} of one component's parameters."""
  return {p: float(jnp.linalg.norm(g)) for p, g in F.flat_params(grads).items()
          if p[0] == component}


@pytest.mark.parametrize("overrides,state_from_head", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_mode_runs_and_gradients_reach_the_right_parameters(batch, overrides, state_from_head):
  config = F.tiny_config(**overrides)
  rollout.check_config(config)
  model = F.random_model(config)
  images, labels = batch
  fn = F.loss_and_grads(config)
  key = jax.random.key(1)
  terms, aux, g_head = fn(model, images, labels, key, HEAD_ONLY)
  _, _, g_recon = fn(model, images, labels, key, RECON_ONLY)

  for name, value in list(terms.items()) + list(aux.items()):
    assert np.isfinite(np.asarray(value)).all(), name
  assert aux["head_per_position"].shape == (8, model.num_patches)
  assert float(terms["head"].min()) > 0
  np.testing.assert_allclose(terms["total"], terms["head"] + config.loss.recon_weight
                             * terms["recon"], rtol=1e-6)

  # The backbone and the head learn from the head loss, every parameter of them.
  for component in ("backbone", "head"):
    dead = [p for p, n in _norms(g_head, component).items() if n == 0]
    assert not dead, f"no head-loss gradient reaches {dead}"
    assert all(n == 0 for n in _norms(g_recon, component).values()), (
        f"reconstruction loss reaches the {component}")

  if state_from_head is None:   # direct_pixel: no state networks, no reconstruction term.
    assert model.encoder is None and model.decoder is None
    assert float(jnp.abs(terms["recon"]).max()) == 0
    return
  assert float(terms["recon"].min()) > 0
  if config.model.state.decoder_context:   # G's context projection learns from reconstruction.
    assert all(n > 0 for p, n in _norms(g_recon, "decoder").items() if p[1] == "context")
  for component in ("encoder", "decoder"):
    assert all(n > 0 for n in _norms(g_recon, component).values()), (
        f"reconstruction loss misses part of the {component}")
    from_head = _norms(g_head, component)
    if state_from_head:
      assert all(n > 0 for n in from_head.values()), f"head loss misses part of the {component}"
    else:
      assert all(n == 0 for n in from_head.values()), (
          f"head loss reaches the {component} through the inputs")


def test_exact_inputs_are_the_sequential_rollout(batch):
  config = F.tiny_config(**{"rollout.mode": "exact"})
  model = F.random_model(config, seed=2)
  images, labels = batch
  key = jax.random.key(7)

  @F.jit
  def exact_inputs(model, images, labels, key):
    x = model.to_patches(images)
    return rollout.build_inputs(model, x, model.encode(x), labels, key, 0, config)

  got = exact_inputs(model, images, labels, key)
  settings = sampler.SampleSettings(num_steps=config.rollout.head_sample_steps)
  want, _ = F.rollout_fn(settings)(model, labels, key)
  assert got.shape == (8, model.num_patches - 1, model.patch_dim)
  np.testing.assert_allclose(got, want[:, :-1], atol=1e-5)
  # The rollout is the model's own: nothing of the ground-truth images is in it.
  assert float(jnp.abs(got - model.to_patches(images)[:, :-1]).mean()) > 0.1


def test_config_errors():
  with pytest.raises(ValueError, match="rollout.mode must be one of"):
    rollout.check_config(F.tiny_config(**{"rollout.mode": "scheduled_sampling"}))
  with pytest.raises(ValueError, match="rollout.sigma_law must be one of"):
    rollout.check_config(F.tiny_config(**{"rollout.sigma_law": "cosine"}))
  with pytest.raises(ValueError, match="0 <= sigma_min <= sigma_max"):
    rollout.check_config(F.tiny_config(**{"rollout.sigma_min": 0.8, "rollout.sigma_max": 0.2}))
  for mode in ("pra", "recon"):
    config = F.tiny_config(**{"rollout.mode": mode, "model.direct_pixel": True})
    with pytest.raises(ValueError, match="direct_pixel=True has no state encoder/decoder"):
      rollout.check_config(config)
    # The training forward refuses it too (before any compile), rather than silently running
    # the state mode on pixels.
    images, labels = F.digits_batch(2)
    with pytest.raises(ValueError, match="direct_pixel=True has no state encoder/decoder"):
      loss.forward_train(F.random_model(config), images, labels, jax.random.key(0), 0, config)


# -- the modes are what they say: each noise is there, and is the only difference ----------------


def _inputs(config, model, batch, key):
  @F.jit
  def fn(model, images, labels, key):
    x = model.to_patches(images)
    return x, rollout.build_inputs(model, x, model.encode(x), labels, key, 0, config)
  return fn(model, *batch, key)


@pytest.mark.parametrize("noisy,clean", [("pixel_noise", "teacher"), ("pra", "recon")])
def test_noise_modes_differ_from_their_clean_twin_by_the_noise_alone(batch, noisy, clean):
  key = jax.random.key(5)
  model = F.random_model(F.tiny_config(), seed=4)
  cfg = lambda mode, **kw: F.tiny_config(**{"rollout.mode": mode, **kw})
  x, clean_in = _inputs(cfg(clean), model, batch, key)
  _, noisy_in = _inputs(cfg(noisy), model, batch, key)
  _, zero_in = _inputs(cfg(noisy, **{"rollout.sigma_law": "fixed", "rollout.sigma": 0.0}),
                       model, batch, key)
  # Without its noise the mode is its clean twin, so the noise is the only difference...
  np.testing.assert_allclose(zero_in, clean_in, atol=1e-5)
  diff = np.asarray(noisy_in - clean_in)
  if noisy == "pixel_noise":
    # ... and it has the configured size: sigma ~ U[0, 1] scaled by pixel_sigma, so the RMS of
    # the difference is pixel_sigma / sqrt(3).
    want = F.tiny_config().rollout.pixel_sigma / np.sqrt(3.0)
    assert np.sqrt(np.mean(diff ** 2)) == pytest.approx(want, rel=0.1)
  else:
    assert np.sqrt(np.mean(diff ** 2)) > 0.05   # State noise of RMS ~0.58, decoded.
  # Independent per position: no two positions got the same noise.
  per_position = diff.reshape(-1, diff.shape[-1])
  assert len(np.unique(np.round(per_position[:, 0], 6))) == per_position.shape[0]
