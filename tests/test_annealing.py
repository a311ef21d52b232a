"""Step annealing (pra_jax/sampling/annealing.py): the schedule, what each patch is integrated
with, the unannealed path unchanged, and images that still depend on their key alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import factories as F
from pra_jax import config_check, rng
from pra_jax.models import head as head_lib
from pra_jax.sampling import annealing, ar_loop

LABELS = jnp.array([0, 3, 7, 9], jnp.int32)
GUIDED = ar_loop.SampleSettings(num_steps=6, solver="heun", cfg=2.0, cfg_schedule="linear",
                                temperature=0.9, min_steps=0)


@pytest.fixture(scope="module")
def model():
  return F.random_model(F.tiny_config(), seed=4)


def test_schedule_falls_linearly_from_num_steps_to_the_floor():
  steps = np.asarray(annealing.steps_per_position(20, 4, 16))
  assert steps[0] == 20 and steps[-1] == 4
  assert (np.diff(steps) <= 0).all()
  np.testing.assert_allclose(steps, np.round(20 - 16 * np.arange(16) / 15), atol=0)
  np.testing.assert_array_equal(annealing.steps_per_position(8, 8, 5), [8] * 5)
  assert annealing.head_evaluations(20, 4, 16, "euler") == steps.sum()
  assert annealing.head_evaluations(20, 4, 16, "heun") == 2 * steps.sum() - 16


def test_heun_does_not_compute_the_evaluation_its_last_step_discards(model, monkeypatch):
  """Heun's last step is Euler's, so num_steps Heun steps are 2 num_steps - 1 head evaluations
  (what sampler_cost and benchmarks/_flops count). The static loop used to compute the last
  step's second evaluation too and throw it away. Counted as they run, loops included."""
  calls = []
  plain = head_lib.guided_velocity

  def counted(*args, **kwargs):
    velocity = plain(*args, **kwargs)

    def run(z, t):
      jax.debug.callback(lambda: calls.append(1))   # A side effect: never optimised away.
      return velocity(z, t)
    return run

  monkeypatch.setattr(head_lib, "guided_velocity", counted)
  h_MD = jnp.ones((4, model.head.cond_proj.in_features), jnp.float32)
  z_MZ = jnp.zeros((4, model.gen_dim), jnp.float32)
  for steps, solver, evals in ((3, "heun", 5), (1, "heun", 1), (3, "euler", 3)):
    calls.clear()
    jax.block_until_ready(head_lib.sample(model.head, h_MD, z_MZ, num_steps=steps,
                                          solver=solver))
    jax.effects_barrier()
    assert len(calls) == evals, (steps, solver, len(calls))


def test_a_flat_schedule_is_the_unannealed_sampler_bit_for_bit(model):
  """min_steps = num_steps runs the traced-count loop; min_steps = 0 the static loop that
  sampled before annealing existed: the same bits, Euler and Heun, guided or not."""
  key = jax.random.key(3)
  for settings in (GUIDED, dataclasses.replace(GUIDED, solver="euler", cfg=1.0)):
    off = F.sample_patches_fn(settings)(model, LABELS, key)
    flat = F.sample_patches_fn(dataclasses.replace(settings, min_steps=settings.num_steps))(
        model, LABELS, key)
    for a, b in zip(off, flat):
      np.testing.assert_array_equal(a, b)


def test_each_patch_is_integrated_with_its_scheduled_steps(model):
  """Patch i's state is head.sample's with steps_N[i] steps, from the same context and noise
  (the context recomputed from the sampled prefix without the cache)."""
  settings = ar_loop.SampleSettings(num_steps=6, solver="euler", cfg=1.0,
                                    cfg_schedule="constant", temperature=1.0, min_steps=1)
  key = jax.random.key(5)
  x_BNP, g_BNZ = F.sample_patches_fn(settings)(model, LABELS, key)
  n = model.num_patches
  steps_N = np.asarray(annealing.steps_per_position(6, 1, n))
  h_BND = model.backbone(x_BNP[:, :-1], LABELS)
  keys_B = rng.example_keys(key, LABELS.shape[0])

  @F.jit
  def head_states(head, h_BND, keys_B):
    out = {}
    for i in range(n):
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i),
                                                   (model.gen_dim,)))(keys_B)
      for s in {int(steps_N[i]), 6}:
        out[i, s] = head_lib.sample(head, h_BND[:, i], noise, num_steps=s)
    return out

  states = head_states(model.head, h_BND, keys_B)
  for i in range(n):
    np.testing.assert_allclose(g_BNZ[:, i], states[i, int(steps_N[i])], atol=1e-4)
  # The last patch's 1 step is not the 6 steps of the first: the check can tell them apart.
  assert float(jnp.abs(states[n - 1, 1] - states[n - 1, 6]).max()) > 1e-2


def test_an_annealed_image_depends_on_its_key_alone(model):
  annealed = dataclasses.replace(GUIDED, min_steps=2)
  keys_B = rng.example_keys(jax.random.key(9), 4)
  x_all, _ = F.sample_patches_fn(annealed)(model, LABELS, keys_B)
  x_two, _ = F.sample_patches_fn(annealed)(model, LABELS[2:], keys_B[2:])
  # Equal to float rounding (another batch shape may block a matmul differently; 16 sampled
  # patches of a random model amplify that to ~1e-5).
  np.testing.assert_allclose(x_two, x_all[2:], atol=1e-4)
  off, _ = F.sample_patches_fn(GUIDED)(model, LABELS, keys_B)
  assert float(jnp.abs(off[:, -1] - x_all[:, -1]).max()) > 1e-3  # Annealing changes images.


def test_bad_floors_are_rejected():
  with pytest.raises(ValueError, match=r"min_steps must be 0 \(no annealing\) or in \[1, "):
    dataclasses.replace(GUIDED, min_steps=7)
  config = F.tiny_config()
  config.sample.num_steps, config.sample.min_steps = 4, 5
  with pytest.raises(ValueError, match="sample.min_steps must be an integer in"):
    config_check.validate(config)
  config.sample.min_steps = 2
  config_check.validate(config)
  assert ar_loop.SampleSettings.from_config(config.sample).min_steps == 2
