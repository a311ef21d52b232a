"""run_inception's plumbing over 2 fake devices with a small stand-in network
(tests/test_fid.py); the caller sets XLA_FLAGS. Prints 'data parallel ok'."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax, jax.numpy as jnp, numpy as np
from absl import logging
from flax import nnx
from pra_jax.metrics import fid, inception
logging.set_verbosity(logging.INFO)

class Stand(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(3, 5))
  def __call__(self, x):
    pool = jnp.mean(x, axis=(1, 2)) @ self.w[...]
    spatial = x[:, ::50, ::50, :].reshape(x.shape[0], -1)
    return inception.InceptionOutput(pool, spatial, pool + 1.0, pool * 2.0)

model = Stand()
images = np.random.default_rng(0).integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
mesh = fid.data_mesh()
assert mesh.shape["data"] == 2
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
out = inception.make_extractor(model, mesh)(jax.device_put(images[:4], sharding))
assert out.pool.sharding.spec[0] == "data", out.pool.sharding  # Split, not gathered.
assert len(out.pool.sharding.device_set) == 2, out.pool.sharding
pool, spatial, logits = fid.run_inception(images, model, batch_size=3)  # 3 -> 4: 2 batches.
want = model(inception.preprocess(jnp.asarray(images)))
for got, ref in ((pool, want.pool), (spatial, want.spatial), (logits, want.logits_unbiased)):
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
print("data parallel ok")
