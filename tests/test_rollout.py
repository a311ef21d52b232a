"""Tests of the input modes: each runs, its losses are finite, and gradients reach what they should.

Head-loss and reconstruction-loss gradients are taken apart (weights (1, 0) and (0, 1) on one
compiled function per mode): (1, 0) is the training loss with loss.recon_weight = 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import factories as F
from pra_jax import config_check, loss, rng, rollout
from pra_jax.sampling import ar_loop
from pra_jax.models import head as head_lib

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


def test_uncoupled_exact_inputs_are_the_free_sequential_rollout(batch):
  """couple_t0 = 0, the uncoupled end of the knob: exact is the sampler's free rollout."""
  config = F.tiny_config(**{"rollout.mode": "exact", "rollout.couple_t0": 0.0})
  model = F.random_model(config, seed=2)
  images, labels = batch
  key = jax.random.key(7)
  got = _inputs(config, model, batch, key)[1]
  settings = ar_loop.SampleSettings.unguided(config.rollout.head_sample_steps)
  sample_keys = rng.split_each(rng.as_example_keys(key, len(labels)), 2)[:, 1]
  want, _ = F.sample_patches_fn(settings)(model, labels, sample_keys)
  assert got.shape == (8, model.num_patches - 1, model.patch_dim)
  np.testing.assert_allclose(got, want[:, :-1], atol=1e-5)
  # The free rollout is the model's own: nothing of the ground-truth images is in it.
  assert float(jnp.abs(got - model.to_patches(images)[:, :-1]).mean()) > 0.1


def _sequential_coupled_rollout(model, x_BNP, labels, key, t0, steps):
  """exact's definition written out: position i's input is G(z~_i), z~_i the head ODE from t0 to 1
  started at t0 E(x_i) + (1 - t0) eps_i, given h_i of the model's own previous inputs (the whole
  prefix recomputed every step, no cache)."""
  b, n, p = x_BNP.shape
  z = model.encode(x_BNP)
  sample_keys = rng.split_each(rng.as_example_keys(key, b), 2)[:, 1]
  inputs = jnp.zeros((b, n - 1, p))
  for i in range(n - 1):
    h = model.backbone(inputs, labels)[:, i]
    eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (model.gen_dim,)))(
        sample_keys)
    g = head_lib.sample(model.head, h, t0 * z[:, i] + (1 - t0) * eps, num_steps=steps, t0=t0)
    inputs = inputs.at[:, i].set(model.decode(g, h))
  return inputs


def test_coupled_exact_is_the_hand_written_sequential_loop(batch):
  config = F.tiny_config(**{"rollout.mode": "exact", "rollout.couple_t0": 0.3})
  model = F.random_model(config, seed=2)
  key = jax.random.key(7)
  x, got = _inputs(config, model, batch, key)
  want = F.jit(lambda model, x, labels, key: _sequential_coupled_rollout(
      model, x, labels, key, 0.3, config.rollout.head_sample_steps))(model, x, batch[1], key)
  # The KV cache and the full recompute differ by float32 rounding, compounded over 15 steps.
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("mode", ["head_sample", "exact"])
def test_coupling_at_t0_one_gives_exactly_the_recon_inputs(batch, mode):
  model = F.random_model(F.tiny_config(), seed=3)
  key = jax.random.key(4)
  _, recon_in = _inputs(F.tiny_config(**{"rollout.mode": "recon"}), model, batch, key)
  _, coupled = _inputs(F.tiny_config(**{"rollout.mode": mode, "rollout.couple_t0": 1.0}), model,
                       batch, key)
  # The same decoder on the same states, batched differently: equal to float32 rounding.
  np.testing.assert_allclose(coupled, recon_in, atol=2e-6)
  # ... and below 1 the head's ODE moves them: the knob is live.
  _, half = _inputs(F.tiny_config(**{"rollout.mode": mode, "rollout.couple_t0": 0.5}), model,
                    batch, key)
  assert float(jnp.abs(half - recon_in).mean()) > 1e-3


def test_config_errors():
  # Each value alone is checked once, against its declaration (config_check); check_config
  # keeps what spans fields.
  with pytest.raises(ValueError, match="rollout.mode='scheduled_sampling' is not one of"):
    config_check.validate(F.tiny_config(**{"rollout.mode": "scheduled_sampling"}))
  with pytest.raises(ValueError, match="rollout.sigma_law='cosine' is not one of"):
    config_check.validate(F.tiny_config(**{"rollout.sigma_law": "cosine"}))
  with pytest.raises(ValueError, match="0 <= sigma_min <= sigma_max"):
    rollout.check_config(F.tiny_config(**{"rollout.sigma_min": 0.8, "rollout.sigma_max": 0.2}))
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="rollout.couple_t0 must be a number in"):
      config_check.validate(F.tiny_config(**{"rollout.couple_t0": bad}))
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
