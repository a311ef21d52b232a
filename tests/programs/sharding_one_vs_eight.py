"""One train step on 1 and on 8 fake CPU devices, and a checkpoint moved between meshes
(tests/test_sharding.py). Runs in its own interpreter: the fake device count must be set before
jax is imported. argv[1]: the checkpoint folder. Prints RESULT{json}."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import json
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from configs import tiny
from pra_jax import checkpoint, data, sharding, train_step

config = tiny.get_config()
images, labels = data.load_digits_split("train", 16)
batch = {"image": images[:8], "label": labels[:8]}

def one_step(mesh):
  bundle = train_step.create_bundle(config, mesh)
  graphdef, state = nnx.split(bundle)
  step_fn = train_step.jit_train_step(graphdef, state, config, donate=False)
  with sharding.use_mesh(mesh):
    g = sharding.global_batch(batch, mesh)
    state, metrics = step_fn(state, g["image"], g["label"])
  return state, {k: float(v) for k, v in metrics.items()}

single = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
multi = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
state_1, m_1 = one_step(single)
state_8, m_8 = one_step(multi)
p_1 = jax.tree.leaves(jax.device_get(state_1["model"]))
p_8 = jax.tree.leaves(jax.device_get(state_8["model"]))
sharded = [str(l.sharding.spec) for l in jax.tree.leaves(state_8["model"]) if hasattr(l, "sharding")]

# A checkpoint written on the (4, 2) mesh restores onto (2, 2) (4 devices) and onto 1.
workdir = sys.argv[1]
ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
ckpt.save(1, state_8, force=True)
ckpt.wait()
restored = {}
for name, mesh in (("four", sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1},
                                               jax.devices()[:4])), ("one", single)):
  target = train_step.abstract_state(config, mesh)[1]   # Shapes and shardings: no init to compile.
  got = ckpt.restore(1, target)
  leaves = jax.tree.leaves(jax.device_get(got["model"]))
  restored[name] = {
      "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves, p_8)),
      "devices": sorted({len(l.sharding.device_set) for l in jax.tree.leaves(got["model"])
                         if hasattr(l, "sharding")}),
  }
ckpt.close()
print("RESULT" + json.dumps({
    "loss_1": m_1["train/total"], "loss_8": m_8["train/total"],
    "gnorm_1": m_1["train/grad_norm"], "gnorm_8": m_8["train/grad_norm"],
    "max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p_1, p_8)),
    "fsdp_specs": sum("fsdp" in s for s in sharded), "restored": restored}))
