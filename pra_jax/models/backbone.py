"""The AR backbone: a causal transformer over [class tokens, embedded pixel patches].

Dimension legend (pra_jax's table): B batch, L tokens, N patches, I pixel inputs (N - 1 when
training, 1 per decoding step), P pixels per patch, D width, A heads, K head dim, S cache positions
(class tokens + N - 1). Output h[:, i] is the context for generating patch i, so the class tokens
and I inputs give I + 1 outputs, the first read at the last class token.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pra_jax.models import attention, layers

POS_EMBS = ("learned", "rope2d")


def remat_policy(name: str):
  """'none' (keep activations), 'full' (recompute all), or a jax.checkpoint_policies name."""
  if name == "none":
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None:
    raise ValueError(f"remat_policy must be 'none', 'full' or a jax.checkpoint_policies name, "
                     f"got {name!r}")
  return policy


class Attention(nnx.Module):
  """Multi-head causal self-attention with optional qk-norm, 2-D RoPE and a KV cache."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype, param_dtype):
    d, self.num_heads = cfg.width, cfg.num_heads
    if d % self.num_heads:
      raise ValueError(f"backbone.width ({d}) must be divisible by backbone.num_heads "
                       f"({self.num_heads})")
    self.head_dim = d // self.num_heads
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.q = layers.dense(d, d, ("backbone_width", "heads"), use_bias=False, **kw)
    self.k = layers.dense(d, d, ("backbone_width", "heads"), use_bias=False, **kw)
    self.v = layers.dense(d, d, ("backbone_width", "heads"), use_bias=False, **kw)
    self.o = layers.dense(d, d, ("heads", "backbone_width"), **kw)
    # qk-norm keeps attention logits bounded, which matters at large width and in bf16.
    self.q_norm = layers.norm(cfg.norm, self.head_dim, axis_name=None, **kw) if cfg.qk_norm else None
    self.k_norm = layers.norm(cfg.norm, self.head_dim, axis_name=None, **kw) if cfg.qk_norm else None
    self.use_rope, self.rope_theta = cfg.pos_emb == "rope2d", cfg.rope_theta
    self.implementation = cfg.attention

  def __call__(self, x_BLD, rows_L, cols_L, cache=None, start=None):
    """Without `cache`, causal attention over x's tokens: (out, None). With one layer's cache
    (keys, values [B, A, S, K]), the tokens sit at slots start.. and attend to the slots before
    them and causally to each other: (out, their new keys and values [B, A, L, K]), which the
    caller writes into the cache."""
    b, l, d = x_BLD.shape
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)
    q, k, v = split(self.q(x_BLD)), split(self.k(x_BLD)), split(self.v(x_BLD))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if self.use_rope:
      q = layers.rope_2d(q, rows_L, cols_L, self.rope_theta)
      k = layers.rope_2d(k, rows_L, cols_L, self.rope_theta)
    if cache is None:
      return self.o(attention.causal(q, k, v, self.implementation).reshape(b, l, d)), None
    # Decoding (the class tokens, then one patch a step) stays on XLA whatever
    # backbone.attention says: a query of one token has no [L, L] logits to keep out of memory,
    # and the fused kernels want whole blocks of queries.
    out = attention.decode(q, *cache, k, v, start)
    return self.o(out.reshape(b, l, d)), (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = layers.norm(cfg.norm, cfg.width, **kw)
    self.attn = Attention(cfg, **kw)
    self.norm2 = layers.norm(cfg.norm, cfg.width, **kw)
    self.mlp = layers.Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.mlp_type, **kw)

  def __call__(self, x_BLD, rows_L, cols_L, cache=None, start=None):
    a, new_kv = self.attn(self.norm1(x_BLD), rows_L, cols_L, cache, start)
    x_BLD = x_BLD + a
    return x_BLD + self.mlp(self.norm2(x_BLD)), new_kv


class Backbone(nnx.Module):
  """Class-conditional causal transformer; index `num_classes` is the null class for CFG."""

  def __init__(self, cfg, *, patch_dim: int, grid: tuple[int, int], num_classes: int,
               rngs: nnx.Rngs):
    if cfg.pos_emb not in POS_EMBS:
      raise ValueError(f"backbone.pos_emb must be one of {POS_EMBS}, got {cfg.pos_emb!r}")
    self.cfg = cfg
    self.num_patches = grid[0] * grid[1]
    self.cache_len = cfg.num_class_tokens + self.num_patches - 1
    attention.check(cfg, self.cache_len)  # Before anything compiles, on the platform it runs.
    self.dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    self.grid, self.num_classes = tuple(grid), num_classes
    self.num_class_tokens = cfg.num_class_tokens
    d = cfg.width
    kw = dict(rngs=rngs, dtype=self.dtype, param_dtype=param_dtype)
    init = nnx.initializers.normal(0.02)
    self.class_embed = nnx.Embed(
        num_classes + 1, d, embedding_init=layers.partitioned(init, ("classes", "backbone_width")),
        dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
    self.class_pos = layers.param(init, (self.num_class_tokens, d), (None, "backbone_width"),
                                  rngs=rngs, param_dtype=param_dtype)
    self.input_proj = layers.dense(patch_dim, d, ("patch_pixels", "backbone_width"), **kw)
    self.pos = (layers.param(init, (self.cache_len, d), (None, "backbone_width"), rngs=rngs,
                             param_dtype=param_dtype)
                if cfg.pos_emb == "learned" else None)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make_blocks(rngs):
        return Block(cfg, rngs=rngs, dtype=self.dtype, param_dtype=param_dtype)
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, **kw) for _ in range(cfg.depth)])
    self.final_norm = layers.norm(cfg.norm, d, **kw)

  # -- token embedding ------------------------------------------------------------------
  def _positions(self, start, length):
    """(row, col) of sequence slots start..start+length; class tokens sit at (0, 0)."""
    s = start + jnp.arange(length)
    patch = s - self.num_class_tokens
    is_patch = patch >= 0
    rows = jnp.where(is_patch, patch // self.grid[1] + 1, 0)
    cols = jnp.where(is_patch, patch % self.grid[1] + 1, 0)
    return rows, cols

  def _add_pos(self, tokens_BLD, start):
    if self.pos is None:
      return tokens_BLD
    pos_LD = jax.lax.dynamic_slice_in_dim(self.pos[...], start, tokens_BLD.shape[1])
    return tokens_BLD + pos_LD.astype(tokens_BLD.dtype)[None]

  def class_tokens(self, y_B):
    tokens = self.class_embed(y_B)[:, None, :] + self.class_pos[...].astype(self.dtype)[None]
    return self._add_pos(tokens, 0)

  def pixel_tokens(self, x_BIP, first_patch):
    tokens = self.input_proj(x_BIP.astype(self.dtype))
    return self._add_pos(tokens, self.num_class_tokens + first_patch)

  # -- the layer stack ------------------------------------------------------------------
  def _run(self, tokens_BLD, start, cache=None, num_layers=None):
    """The layer stack (the first `num_layers` blocks only, without the final norm, if given)."""
    rows, cols = self._positions(start, tokens_BLD.shape[1])
    blocks = self.blocks
    if num_layers is not None:
      if self.cfg.scan_layers:
        graphdef, state = nnx.split(self.blocks)
        blocks = nnx.merge(graphdef, jax.tree.map(lambda a: a[:num_layers], state))
      else:
        blocks = list(self.blocks)[:num_layers]
    policy = remat_policy(self.cfg.remat_policy)

    def body(x, block, layer_cache):
      x, new_kv = block(x, rows, cols, layer_cache, start)
      return layers.constrain(x, ("act_batch", None, None)), new_kv

    if self.cfg.remat_policy != "none":
      body = nnx.remat(body, policy=policy, prevent_cse=not self.cfg.scan_layers)
    x = layers.constrain(tokens_BLD, ("act_batch", None, None))
    if cache is None:
      if self.cfg.scan_layers:
        scan = nnx.scan(lambda x, blk: (body(x, blk, None)[0], None),
                        in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        x, _ = scan(x, blocks)
      else:
        for block in blocks:
          x, _ = body(x, block, None)
      return (self.final_norm(x) if num_layers is None else x), None
    # Decoding: each layer reads its slice of the cache and returns only the new tokens' keys
    # and values; one write after the layer stack puts them at slots start.. of every layer.
    # A layer that wrote into the cache it also read made XLA copy the whole cache, every
    # layer of every step; reads first and a single write after leave one buffer, updated in
    # place (tests/test_sampler.py reads the compiled loop for it).
    if self.cfg.scan_layers:
      scan = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
      x, new_kv = scan(x, self.blocks, cache)
    else:
      per_layer = []
      for i, block in enumerate(blocks):
        x, kv = body(x, block, (cache[0][i], cache[1][i]))
        per_layer.append(kv)
      new_kv = tuple(jnp.stack(t) for t in zip(*per_layer))
    cache = tuple(jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, 0, 0, start, 0))
                  for c, new in zip(cache, new_kv))
    return (self.final_norm(x) if num_layers is None else x), cache

  # -- public entry points --------------------------------------------------------------
  def __call__(self, x_in_BIP, y_B):
    """Teacher-forced pass: inputs x_1..x_I -> contexts h_1..h_{I+1}, float32 [B, I+1, D]."""
    tokens = jnp.concatenate([self.class_tokens(y_B), self.pixel_tokens(x_in_BIP, 0)], axis=1)
    h, _ = self._run(tokens, 0)
    return h[:, self.num_class_tokens - 1:].astype(jnp.float32)

  def features(self, x_in_BIP, y_B, layer: int = -1):
    """Hidden states at the pixel tokens after block `layer` (-1: the final, normed output),
    float32 [B, I, D]: what a linear probe reads."""
    depth = self.cfg.depth
    if not -depth <= layer < depth:
      raise ValueError(f"probe layer must be in [-{depth}, {depth}) for a depth-{depth} backbone, "
                       f"got {layer}")
    num_layers = None if layer in (-1, depth - 1) else layer % depth + 1
    tokens = jnp.concatenate([self.class_tokens(y_B), self.pixel_tokens(x_in_BIP, 0)], axis=1)
    h, _ = self._run(tokens, 0, num_layers=num_layers)
    return h[:, self.num_class_tokens:].astype(jnp.float32)

  def init_cache(self, batch: int, dtype=None):
    """Zeroed keys and values for every layer: a pair of heads-major [depth, B, A, S, K] arrays
    (attention.decode's layout), in attention.cache_dtype unless `dtype` is given."""
    shape = (self.cfg.depth, batch, self.cfg.num_heads, self.cache_len,
             self.cfg.width // self.cfg.num_heads)
    dtype = dtype or attention.cache_dtype(self.dtype)
    return (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def prefill(self, y_B, cache):
    """Runs the class tokens into the cache; returns h_1 [B, D] (context of patch 0)."""
    h, cache = self._run(self.class_tokens(y_B), 0, cache)
    return h[:, -1].astype(jnp.float32), cache

  def step(self, x_BP, patch_index, cache):
    """Feeds patch `patch_index`; returns the context of patch `patch_index + 1`."""
    tokens = self.pixel_tokens(x_BP[:, None], patch_index)
    h, cache = self._run(tokens, self.num_class_tokens + patch_index, cache)
    return h[:, 0].astype(jnp.float32), cache
