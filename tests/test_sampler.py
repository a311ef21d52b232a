"""Tests of AR sampling: KV cache vs full recompute, classifier-free guidance, the null class.

Random (non-degenerate) tiny models on CPU; every compiled sampler is shared through factories.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import factories as F
from pra_jax import config_check
from pra_jax.sampling import ar_loop
from pra_jax.models import head as head_lib

LABELS = jnp.array([0, 3, 7, 9], jnp.int32)

SETTINGS = {
    # num_steps = rollout.head_sample_steps: the exact input mode's sampler, compiled once.
    "euler": ar_loop.SampleSettings.unguided(4),
    "euler_cfg_linear": ar_loop.SampleSettings(num_steps=4, solver="euler", cfg=2.0,
                                               cfg_schedule="linear", temperature=1.0,
                                               min_steps=0),
    "heun_cfg_constant": ar_loop.SampleSettings(num_steps=3, solver="heun", cfg=2.0,
                                                cfg_schedule="constant", temperature=1.0,
                                                min_steps=0),
}
# The Heun case also decodes with the context h (test_model checks the cache under learned
# positions: through 16 sampled patches a random model amplifies float error past 1e-4 there).
# Cached decoding sums attention in another order than the full pass (attention.decode's
# multiply-and-sum, not a matrix product): float32 error, amplified through 16 sampled patches.
ATOL = 3e-4
OTHER_PATHS = {"model.state.decoder_context": True}


@pytest.fixture(scope="module")
def model():
  return F.random_model(F.tiny_config(), seed=4)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_kv_cache_matches_full_recompute(model, name):
  settings, key = SETTINGS[name], jax.random.key(11)
  if name.startswith("heun"):
    model = F.random_model(F.tiny_config(**OTHER_PATHS), seed=4)
    assert model.decoder_uses_context
  x_cache, g_cache = F.sample_patches_fn(settings)(model, LABELS, key)
  uncached = dataclasses.replace(settings, use_cache=False)
  x_full, g_full = F.sample_patches_fn(uncached)(model, LABELS, key)
  assert x_cache.shape == (4, model.num_patches, model.patch_dim)
  assert g_cache.shape == (4, model.num_patches, model.gen_dim)
  assert np.isfinite(np.asarray(x_cache)).all()
  np.testing.assert_allclose(x_cache, x_full, atol=ATOL)
  np.testing.assert_allclose(g_cache, g_full, atol=ATOL)
  assert float(jnp.std(x_cache[:, 1:] - x_cache[:, :-1])) > 0.05, "patches do not vary"


def test_generate_same_key_same_images(model):
  settings, key = SETTINGS["euler_cfg_linear"], jax.random.key(11)
  images = np.asarray(ar_loop.generate(model, LABELS, key, settings))
  assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(ar_loop.generate(model, LABELS, key, settings), images)
  # The cached sampler against full recompute, in uint8: equal up to a flip of a value that
  # sits within float error of a rounding boundary.
  uncached = dataclasses.replace(settings, use_cache=False)
  x_full, _ = F.sample_patches_fn(uncached)(model, LABELS, key)
  diff = np.abs(np.asarray(model.to_images(x_full), np.int32) - images)
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99
  other = np.asarray(ar_loop.generate(model, LABELS, jax.random.key(12), settings), np.int32)
  assert np.abs(other - images).mean() > 5


def test_guidance_schedule_and_strength(model):
  key = jax.random.key(11)
  x_plain, _ = F.sample_patches_fn(SETTINGS["euler"])(model, LABELS, key)
  x_linear, _ = F.sample_patches_fn(SETTINGS["euler_cfg_linear"])(model, LABELS, key)
  # The linear schedule starts at scale 1: the first patch is the unguided one; later ones move.
  np.testing.assert_allclose(x_linear[:, 0], x_plain[:, 0], atol=1e-5)
  assert float(jnp.abs(x_linear[:, -1] - x_plain[:, -1]).max()) > 1e-2
  # ... rising by (cfg - 1) / N a patch, as its docstring and config_schema say.
  np.testing.assert_allclose(ar_loop.cfg_scales(SETTINGS["euler_cfg_linear"], 4),
                             [1.0, 1.25, 1.5, 1.75])


def test_cfg_scale_one_is_conditional_sampling(model):
  """v = v_u + s (v_c - v_u): s = 1 is the conditional flow, s = 0 the unconditional one."""
  rng = np.random.default_rng(0)
  m, d = 6, model.backbone.cfg.width
  h_c, h_u = (jnp.asarray(rng.standard_normal((m, d)), jnp.float32) for _ in range(2))
  noise = jnp.asarray(rng.standard_normal((m, model.gen_dim)), jnp.float32)
  per_row = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])

  @F.jit
  def draws(head, h_c, h_u, noise):
    run = lambda h, **kw: head_lib.sample(head, h, noise, num_steps=3, **kw)
    return (run(h_c), run(h_u), run(h_c, h_uncond_MD=h_u, cfg_scale=1.0),
            run(h_c, h_uncond_MD=h_u, cfg_scale=0.0), run(h_c, h_uncond_MD=h_u, cfg_scale=3.0),
            run(h_c, h_uncond_MD=h_u, cfg_scale=per_row))

  cond, uncond, s1, s0, s3, mixed = draws(model.head, h_c, h_u, noise)
  np.testing.assert_allclose(s1, cond, atol=1e-5)
  np.testing.assert_allclose(s0, uncond, atol=1e-5)
  assert float(jnp.abs(s3 - cond).min(axis=1).max()) > 1e-3
  np.testing.assert_allclose(mixed, jnp.where(per_row[:, None] == 1.0, cond, uncond), atol=1e-5)


def test_null_class_path(model):
  assert model.null_class == model.num_classes == 10
  assert model.backbone.class_embed.embedding.shape[0] == 11
  settings, key = SETTINGS["euler"], jax.random.key(11)
  null = jnp.full_like(LABELS, model.null_class)
  x_real, _ = F.sample_patches_fn(settings)(model, LABELS, key)
  x_null, _ = F.sample_patches_fn(settings)(model, null, key)
  assert float(jnp.abs(x_real - x_null).max()) > 1e-2
  # Guidance at scale 0 follows the unconditional half alone: the rollout of the null class.
  unconditional = dataclasses.replace(SETTINGS["euler"], cfg=0.0)
  x_uncond, _ = F.sample_patches_fn(unconditional)(model, LABELS, key)
  np.testing.assert_allclose(x_uncond, x_null, atol=1e-4)


def test_bad_requests_are_rejected(model):
  settings, key = SETTINGS["euler"], jax.random.key(0)
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\), got \[10\]"):
    ar_loop.generate(model, [0, 10], key, settings)   # 10 is the null class, not a request.
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\), got \[-1\]"):
    ar_loop.generate(model, np.array([-1, 2]), key, settings)
  with pytest.raises(ValueError, match="1-D integer array"):
    ar_loop.generate(model, np.array([1.5, 2.0]), key, settings)
  with pytest.raises(ValueError, match="1-D integer array"):
    ar_loop.generate(model, np.zeros((2, 2), np.int32), key, settings)
  # solver and cfg_schedule are checked once, against their declarations (config_check).
  with pytest.raises(ValueError, match="sample.cfg_schedule='cosine' is not one of"):
    config_check.validate(F.tiny_config(**{"sample.cfg_schedule": "cosine"}))
  with pytest.raises(ValueError, match=r"sample.solver='rk4' is not one of \('euler', 'heun'\)"):
    config_check.validate(F.tiny_config(**{"sample.solver": "rk4"}))
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    dataclasses.replace(settings, num_steps=0)


def _loop_computations(hlo: str) -> dict[str, list[str]]:
  """{name: instruction lines} of every computation a while loop's body runs, nested ones and
  fusions included, from a compiled module's text."""
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
    if head:
      name = head.group(1)
      comps[name] = []
    elif name is not None and line.strip() and line.strip() != "}":
      comps[name].append(line.strip())
  called = lambda lines: {c for l in lines
                          for c in re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", l)}
  todo = [c for lines in comps.values() for l in lines for c in re.findall(r"body=%([\w.\-]+)", l)]
  seen = set()
  while todo:
    c = todo.pop()
    if c not in seen and c in comps:
      seen.add(c)
      todo.extend(called(comps[c]))
  return {c: comps[c] for c in seen}


@pytest.mark.parametrize("overrides", [
    {}, {"model.backbone.scan_layers": True, "model.backbone.dtype": "bfloat16",
        "model.backbone.depth": 8}],
    ids=["tiny", "scanned_bf16"])
def test_kv_cache_is_updated_in_place(overrides):
  """The compiled position loop neither copies, converts nor re-creates a cache-sized buffer:
  each step writes its keys and values into the one cache it carries. The scanned bfloat16
  stack is the paper configs': there a bfloat16 cache on the CPU was converted whole to float32
  and back around every layer's write, and a layer that wrote the cache it then read made XLA
  copy it."""
  config = F.tiny_config(**{"sample.cfg": 2.0, **overrides})
  graphdef, state = nnx.split(F.random_model(config))
  settings = ar_loop.SampleSettings.from_config(config.sample)
  labels_B = jnp.arange(3, dtype=jnp.int32)

  def generate(state, labels_B):
    return ar_loop.sample_patches(nnx.merge(graphdef, state), labels_B, jax.random.key(0),
                                  settings)[0]

  hlo = jax.jit(generate).lower(state, labels_B).compile().as_text()
  backbone = nnx.merge(graphdef, state).backbone
  cache = backbone.init_cache(2 * labels_B.shape[0])[0]   # Guided: [cond; uncond] rows.
  sized = re.compile(r"= \w+\[" + ",".join(map(str, cache.shape))
                     + r"\]\S* (copy|broadcast|convert)\(")
  loops = _loop_computations(hlo)
  assert loops, "no while loop in the compiled sampler"
  found = [f"{name}: {line[:120]}" for name, lines in loops.items() for line in lines
           if sized.search(line)]
  assert not found, ("cache-sized copies, converts or broadcasts inside the loop:\n"
                     + "\n".join(found))
