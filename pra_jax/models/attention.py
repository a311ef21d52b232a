"""The causal self-attention kernels behind model.backbone.attention, and the check that the one
chosen runs on this platform (called at config check and model build, before anything compiles).

  xla     jax.nn.dot_product_attention lowered by XLA: any platform; the [B, A, L, L] logits
          (and, in training, their softmax) live in memory.
  cudnn   cuDNN's fused flash attention (NVIDIA GPUs, bfloat16 / float16 compute): the logits
          never reach memory and the masked half of the causal square is skipped.
  splash  Pallas splash attention with a causal block mask (TPU): the same, in 128-wide tiles.

Dimension legend (pra_jax's table): B batch, L tokens, A heads, K head dim.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pra_jax.models import layers

IMPLEMENTATIONS = ("xla", "cudnn", "splash")
SPLASH_TILE = 128  # Splash's tiles are multiples of the TPU's 128 lanes, so L must be too.


def target_platform() -> str:
  """'cpu' | 'gpu' | 'tpu' of the devices the program is built for: the current mesh's, else
  this process's first device. The mesh decides because a plan compiles for compile-only
  devices (a TPU slice from libtpu, pra_jax/targets.py) while this process's backend is the CPU.
  """
  target = jax.sharding.get_abstract_mesh().abstract_device
  return target.platform if target is not None else jax.devices()[0].platform


def _platform() -> tuple[str, str]:
  """(target_platform(), the backend's version string, which tells CUDA from ROCm; empty for
  compile-only devices, which have no runtime to report one)."""
  local = jax.devices()[0]
  platform = target_platform()
  version = getattr(local.client, "platform_version", "") if platform == local.platform else ""
  return platform, version


def check(cfg, seq_len: int) -> None:
  """Raises one clear ValueError if backbone config `cfg`'s attention cannot run here.

  `seq_len`: the training sequence, class tokens + N - 1 patch inputs.
  """
  name = cfg.attention
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"config model.backbone.attention={name!r} is not one of {IMPLEMENTATIONS}")
  if name == "xla":
    return
  platform, version = _platform()
  where = f"this platform is {platform!r}" + (f" ({version})" if version else "")
  head_dim = cfg.width // cfg.num_heads
  if name == "cudnn":
    if platform != "gpu" or "rocm" in version.lower():
      raise ValueError(f"config model.backbone.attention='cudnn' needs an NVIDIA GPU, but "
                       f"{where}; use 'xla'" + (" or 'splash'" if platform == "tpu" else ""))
    if cfg.dtype not in ("bfloat16", "float16"):
      raise ValueError(f"config model.backbone.attention='cudnn' runs in bfloat16 or float16, "
                       f"but model.backbone.dtype={cfg.dtype!r}")
    # cuDNN's flash kernel: head dims a multiple of 8, up to 128 (256 from Hopper on).
    capability = float(getattr(jax.devices()[0], "compute_capability", "0") or 0)
    max_dim = 256 if capability >= 9.0 else 128
    if head_dim % 8 or head_dim > max_dim:
      raise ValueError(f"config model.backbone.attention='cudnn' needs a head dim that is a "
                       f"multiple of 8 and at most {max_dim} on this GPU, but width/num_heads = "
                       f"{head_dim}")
  if name == "splash":
    if platform != "tpu":
      raise ValueError(f"config model.backbone.attention='splash' is a TPU kernel, but {where}; "
                       f"use 'xla'" + (" or 'cudnn'" if platform == "gpu" else ""))
    if seq_len % SPLASH_TILE:
      raise ValueError(f"config model.backbone.attention='splash' needs a sequence length that "
                       f"is a multiple of {SPLASH_TILE}, but class tokens + patches - 1 = "
                       f"{seq_len}")


def xla(q_BLAK, k_BLAK, v_BLAK):
  return jax.nn.dot_product_attention(q_BLAK, k_BLAK, v_BLAK, is_causal=True)


def cudnn(q_BLAK, k_BLAK, v_BLAK):
  # RoPE and qk-norm keep the compute dtype, which check() made bf16 / f16; the kernel wants
  # all three alike.
  dtype = q_BLAK.dtype
  return jax.nn.dot_product_attention(q_BLAK, k_BLAK.astype(dtype), v_BLAK.astype(dtype),
                                      is_causal=True, implementation="cudnn")


def _splash_local(q_BLAK, k_BLAK, v_BLAK, *, interpret: bool):
  """Splash on one device's shard: the kernel takes [A, L, K] per example, unscaled logits."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # TPU-only module.

  _, l, h, k = q_BLAK.shape
  tile = max(t for t in (512, 256, SPLASH_TILE) if l % t == 0)
  blocks = sa.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile, block_q_dkv=tile,
                         block_kv_dkv=tile, block_kv_dkv_compute=tile, block_q_dq=tile,
                         block_kv_dq=tile)
  kernel = sa.make_splash_mha(sa.MultiHeadMask([sa.CausalMask((l, l))] * h), block_sizes=blocks,
                              head_shards=1, q_seq_shards=1, interpret=interpret)
  heads_first = lambda a: jnp.swapaxes(a, 1, 2)
  q = q_BLAK * jnp.asarray(1.0 / np.sqrt(k), q_BLAK.dtype)
  out_BALK = jax.vmap(kernel)(heads_first(q), heads_first(k_BLAK.astype(q.dtype)),
                              heads_first(v_BLAK.astype(q.dtype)))
  return heads_first(out_BALK)


def splash(q_BLAK, k_BLAK, v_BLAK):
  if q_BLAK.shape[1] % SPLASH_TILE:
    raise ValueError(f"splash attention needs a sequence length that is a multiple of "
                     f"{SPLASH_TILE}, got {q_BLAK.shape[1]}")
  # Mosaic compiles the kernel for the mesh's TPUs, also for compile-only ones (a plan) from a
  # CPU process. Off TPU only tests get here (check() refuses it): Pallas interprets the kernel.
  interpret = target_platform() != "tpu"
  local = lambda q, k, v: _splash_local(q, k, v, interpret=interpret)
  spec = layers.logical_spec(q_BLAK.shape, ("act_batch", None, "heads", None))
  if spec is None:
    return local(q_BLAK, k_BLAK, v_BLAK)
  # A Pallas call has no partitioning rule for GSPMD: run it per shard (batch over data x
  # fsdp, heads over tensor), where attention needs nothing from other devices.
  return jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=(spec,) * 3,
                       out_specs=spec, check_vma=False)(q_BLAK, k_BLAK, v_BLAK)


KERNELS = {"xla": xla, "cudnn": cudnn, "splash": splash}


def cache_dtype(compute_dtype):
  """The KV cache's dtype: the compute dtype, but float32 when the program is built for a CPU.
  XLA:CPU has no native bfloat16 arithmetic: a bfloat16 cache was converted whole to float32
  and back around every layer's write, every step (tests/test_sampler.py's in-place check).
  Accelerators keep the compute dtype and half the bytes."""
  return jnp.float32 if target_platform() == "cpu" else compute_dtype


def decode(q_BLAK, k_old_BASK, v_old_BASK, k_new_BLAK, v_new_BLAK, start):
  """Attention of L new tokens (sequence slots start..start+L-1) over the cache's slots before
  `start` and, causally, over each other: a step of KV-cached decoding, which reads the cache
  as it was before the step (the new keys and values are written after every layer has run).
  The cache is heads-major, [B, A, S, K].

  One token a step (L = 1, every decoding step after the class tokens) is a batched
  matrix-vector product per (image, head) over the heads-major cache, in float32: on XLA:CPU at
  128 rows, 11 ms a layer against 160 ms for jax.nn.dot_product_attention on a slot-major
  bfloat16 cache (bench_sampler's mid config, 2026-12-06). Every sum is written as a product
  (einsum), none as jnp.sum: XLA:CPU vectorises a reduction differently with the batch size, and
  an image must get the same bits in any batch (tests/test_sample.py). Several tokens (the class
  tokens) take jax.nn.dot_product_attention over the old slots and the new tokens side by side.
  """
  b, l, a, k = q_BLAK.shape
  old_S = jnp.arange(k_old_BASK.shape[2]) < start
  if l != 1:
    slot_major = lambda c: jnp.swapaxes(c, 1, 2).astype(q_BLAK.dtype)
    keys = jnp.concatenate([slot_major(k_old_BASK), k_new_BLAK], axis=1)
    values = jnp.concatenate([slot_major(v_old_BASK), v_new_BLAK], axis=1)
    mask_LS = jnp.concatenate([jnp.broadcast_to(old_S, (l, old_S.shape[0])),
                               jnp.tril(jnp.ones((l, l), bool))], axis=1)
    return jax.nn.dot_product_attention(q_BLAK, keys, values, mask=mask_LS[None, None])
  f32 = lambda t: t.astype(jnp.float32)
  q_BAK = f32(q_BLAK[:, 0]) * (k ** -0.5)
  # The mask as an added bias, not a select: XLA:CPU fused a select on the logits into each of
  # their readers and recomputed the reduction in every one.
  bias_S = jnp.where(old_S, 0.0, -1e30)
  logits_BAS = jnp.einsum("bak,bask->bas", q_BAK, f32(k_old_BASK)) + bias_S
  logit_new_BA = jnp.einsum("bak,bak->ba", q_BAK, f32(k_new_BLAK[:, 0]))
  # Softmax over the old slots and the token itself, without concatenating the cache.
  top_BA = jnp.maximum(jnp.max(logits_BAS, axis=-1), logit_new_BA)
  p_BAS = jnp.exp(logits_BAS - top_BA[..., None])
  p_new_BA = jnp.exp(logit_new_BA - top_BA)
  total_BA = jnp.einsum("bas,s->ba", p_BAS, jnp.ones_like(bias_S)) + p_new_BA
  out_BAK = (jnp.einsum("bas,bask->bak", p_BAS, f32(v_old_BASK))
             + p_new_BA[..., None] * f32(v_new_BLAK[:, 0])) / total_BA[..., None]
  return out_BAK[:, None].astype(q_BLAK.dtype)


def causal(q_BLAK, k_BLAK, v_BLAK, implementation: str):
  """Causal attention of [B, L, A, K] queries, keys and values by the named kernel."""
  return KERNELS[implementation](q_BLAK, k_BLAK, v_BLAK)
