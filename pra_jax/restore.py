"""Reading a trained run's weights back: the EMA (or raw) model of one checkpoint, and nothing
else (Orbax partial restore: not the optimizer state, not the other copy of the model).

One path for every reader, placed as the reader needs it:
  restore_for_sampling(config, workdir)        # newest step, laid out as training lays it out
  restore_weights(config, workdir, step, mesh)  # one step, replicated (the pod sampler)
"""

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding

from pra_jax import checkpoint, cli, config_check, run_record, sharding, train_step
from pra_jax.models import pra


def _part(use_ema) -> str:
  """use_ema: True (part 'ema'), False ('model'), or a weights name of train_step.weights_part."""
  if isinstance(use_ema, str):
    return train_step.weights_part(use_ema)
  return "ema" if use_ema else "model"


def _restore(ckpt, step: int, config, mesh, use_ema: bool, *, replicate: bool):
  """The model of checkpoint `step`, its arrays on `mesh`: replicated, or sharded by the
  model's own logical axes (as training holds them)."""
  part = _part(use_ema)
  known = ["model", *train_step.ema_parts(config)]
  if part not in known:  # Orbax's partial restore would hand back the request unfilled.
    raise ValueError(f"no weights {part!r} in this run: it keeps {known} ('model' = raw; "
                     f"ema_<i>: train.ema_decays)")
  graphdef, abstract = nnx.split(pra.abstract_model(config, mesh))
  placement = (lambda _: sharding.replicated(mesh)) if replicate else (
      lambda x: NamedSharding(mesh, x.sharding.spec))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement(x)),
                        abstract)
  args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={part: target}, partial_restore=True,
      restore_args={part: jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding),
                                       target)}))
  try:
    # A config that matches the run's record still meets other shapes when another layout of
    # the model wrote them (an older pra_jax, a checkpoint copied in by hand): said from the
    # metadata, naming the leaves.
    ckpt.check_holds(step, {part: target})
    restored = ckpt.manager.restore(step, args=args)
  except run_record.ConfigMismatch:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise cli.mark_user_error(ValueError(
        f"checkpoint {ckpt.directory}/{step} does not restore into this config's model "
        f"({type(e).__name__}: {str(e).splitlines()[0][:300]}); expected arrays of the shapes "
        f"this pra_jax builds for the run's config: read it with the pra_jax that wrote it, or "
        f"retrain")) from e
  logging.info("Restored the %s weights of step %d from %s.", part, step, ckpt.directory)
  return nnx.merge(graphdef, restored["state"][part])


def restore_weights(config, workdir: str, step: int, mesh, use_ema: bool = True):
  """The EMA (or raw) model of checkpoint `step`, replicated on every device of `mesh`: the
  data-parallel sampler's layout, never the training mesh's. use_ema may also name the weights
  ('ema', 'raw', 'ema_<i>' of train.ema_decays)."""
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  return _restore(ckpt, step, config, mesh, use_ema, replicate=True)


def restore_for_sampling(config, workdir: str, use_ema: bool = True):
  """(model, mesh, step): the EMA (or raw) model of the newest good checkpoint in `workdir`,
  sharded on the config's training mesh, which the caller then samples or measures under.

  Refuses another run's config before reading anything (by config.json, then by the saved tree),
  and writes nothing.
  """
  with cli.user_input():
    config_check.validate(config)
    run_record.check_readable(workdir, config)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  mesh = sharding.make_mesh(config.sharding.mesh)
  want = {_part(use_ema): nnx.state(pra.abstract_model(config, mesh))}
  with cli.user_input():
    step = ckpt.newest_step(want)
  if step is None:
    raise ValueError(f"no checkpoint in {ckpt.directory} restores into this config's model")
  return _restore(ckpt, step, config, mesh, use_ema, replicate=False), mesh, step
