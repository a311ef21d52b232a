"""The whole PRA model: state encoder, pixel decoder, AR backbone and flow head in one module.

Dimension legend (pra_jax's table): B batch, H/W/C image height/width/channels, N patches,
P pixels per patch, Z state dims (P for the direct-pixel baseline), D backbone width.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pra_jax import cli, patches, sharding
from pra_jax.models.backbone import Backbone
from pra_jax.models.head import FlowHead
from pra_jax.models.state import PixelDecoder, StateEncoder


class PRA(nnx.Module):
  """Pixel-in, pixel-out AR generator.

  With `direct_pixel` there is no encoder or decoder: the head generates the P pixels of a patch
  itself (the pixel-space x/v/eps-prediction baseline).
  """

  def __init__(self, config, *, rngs: nnx.Rngs):
    data, model = config.data, config.model
    if data.channels not in (1, 3):
      raise ValueError(f"data.channels must be 1 or 3, got {data.channels}")
    self.image_shape = (data.image_size, data.image_size, data.channels)
    self.patch_size = model.patch_size
    self.grid = patches.check_patchable(data.image_size, data.image_size, model.patch_size)
    self.num_patches = self.grid[0] * self.grid[1]
    self.patch_dim = model.patch_size ** 2 * data.channels
    self.num_classes = data.num_classes
    self.direct_pixel = model.direct_pixel
    d = model.backbone.width
    if self.direct_pixel:
      self.encoder = self.decoder = None
      gen_dim = self.patch_dim
    else:
      self.encoder = StateEncoder(model.state, patch_dim=self.patch_dim, rngs=rngs)
      self.decoder = PixelDecoder(model.state, patch_dim=self.patch_dim, context_dim=d, rngs=rngs)
      gen_dim = model.state.dim
    self.gen_dim = gen_dim
    self.backbone = Backbone(model.backbone, patch_dim=self.patch_dim, grid=self.grid,
                             num_classes=data.num_classes, rngs=rngs)
    self.head = FlowHead(model.head, out_dim=gen_dim, cond_dim=d, rngs=rngs)
    # Every route that builds the model for a mesh (create_model, abstract_model, the training
    # state) does it under sharding.use_mesh: a width the mesh cannot split is refused here,
    # while tracing, before anything compiles.
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
      with cli.user_input():
        sharding.check_params_divide(nnx.state(self, nnx.Param), mesh)

  @property
  def null_class(self) -> int:
    return self.num_classes

  @property
  def decoder_uses_context(self) -> bool:
    return self.decoder is not None and self.decoder.uses_context

  def check_images(self, images_BHWC):
    if images_BHWC.ndim != 4 or tuple(images_BHWC.shape[1:]) != self.image_shape:
      raise ValueError(f"images must be [batch, {', '.join(map(str, self.image_shape))}] "
                       f"(data.image_size, data.channels), got shape {tuple(images_BHWC.shape)}")

  def to_patches(self, images_BHWC):
    """uint8 or [-1, 1] float images -> pixel patches x_BNP in [-1, 1]."""
    self.check_images(images_BHWC)
    if images_BHWC.dtype == jnp.uint8:
      images_BHWC = patches.to_model_scale(images_BHWC)
    return patches.patchify(images_BHWC, self.patch_size)

  def to_images(self, x_BNP):
    """Pixel patches in [-1, 1] -> uint8 images."""
    h, w, c = self.image_shape
    return patches.to_uint8(patches.unpatchify(x_BNP, self.patch_size, h, w, c))

  def encode(self, x_BNP):
    """The head's target: the state z = E(x), or the pixels themselves when direct."""
    return x_BNP if self.direct_pixel else self.encoder(x_BNP)

  def decode(self, g_BNZ, h_BND=None):
    """Generated state -> pixels (the identity for the direct-pixel baseline)."""
    if self.direct_pixel:
      return g_BNZ
    return self.decoder(g_BNZ, h_BND if self.decoder_uses_context else None)


def count_params(model: nnx.Module) -> dict[str, int]:
  """Parameter count per component and in total (works on abstract models too)."""
  counts = {}
  for name in ("encoder", "decoder", "backbone", "head"):
    part = getattr(model, name)
    leaves = jax.tree.leaves(nnx.state(part, nnx.Param)) if part is not None else []
    counts[name] = int(sum(x.size for x in leaves))
  counts["total"] = sum(counts.values())
  return counts


def abstract_model(config, mesh=None) -> PRA:
  """The model as shapes (with shardings) only: no memory allocated, for counting and planning."""
  with sharding.use_mesh(mesh or sharding.single_device_mesh()):
    return nnx.eval_shape(lambda: PRA(config, rngs=nnx.Rngs(0)))


def create_model(config, mesh=None) -> PRA:
  """The model with its parameters born sharded on `mesh` (one device if none is given).

  Initialisation runs under jit, so each device only ever holds its own shards.
  """
  mesh = mesh or sharding.single_device_mesh()
  with sharding.use_mesh(mesh):
    return nnx.jit(lambda: PRA(config, rngs=nnx.Rngs(config.seed)))()


COMPONENTS = ("encoder", "decoder", "backbone", "head")


def _size(tree) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(tree)))


def component_breakdown(model) -> dict[str, dict[str, int]]:
  """{component: {sub-module: count}}; a component absent from the model (direct_pixel) is {}."""
  out = {}
  for name in COMPONENTS:
    part = getattr(model, name)
    state = nnx.state(part, nnx.Param) if part is not None else {}
    out[name] = {key: _size(sub) for key, sub in state.items()}
  return out


def param_table(config) -> str:
  """A text table of parameters: components, their sub-modules, and the whole model."""
  model = abstract_model(config)  # Shapes only: nothing is allocated.
  counts = count_params(model)
  total = counts["total"]
  b, h, s = config.model.backbone, config.model.head, config.model.state
  lines = [
      f"backbone {b.width} wide x {b.depth} deep ({b.num_heads} heads, mlp x{b.mlp_ratio:g} "
      f"{b.mlp_type}); head {h.width} wide x {h.depth} blocks; state Z={s.dim}, E/G "
      f"{s.width} wide x {s.depth} blocks" + (" (unused: direct_pixel)"
                                               if config.model.direct_pixel else ""),
      f"{'component':<28}{'params':>16}{'share':>9}",
  ]
  for name, subs in component_breakdown(model).items():
    lines.append(f"{name:<28}{counts[name]:>16,}{counts[name] / total:>9.1%}")
    for sub, n in subs.items():
      lines.append(f"  {sub:<26}{n:>16,}")
  lines.append(f"{'total':<28}{total:>16,}{1:>9.1%}")
  lines.append(f"total: {total / 1e6:.2f}M parameters, {4 * total / 2**20:,.0f} MiB in float32")
  return "\n".join(lines)
