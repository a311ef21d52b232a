"""The plan compiled by the TPU compiler for a TPU slice that is not here: accelerator types map
to their chips, the train step compiles with the real splash kernel (a Mosaic custom call, not
Pallas's interpreter) and the sampler with its KV cache, each with bytes per chip."""

import importlib.util

import numpy as np
import pytest

import factories as F
from pra_jax import memory_plan, targets

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -r requirements-test.txt installs it): the TPU "
           "compiler is what these tests check")

SMALLEST = "v5litepod-1"  # One chip: the fastest compile that still runs the kernel per shard.


def test_accelerator_types_map_to_chips_and_topologies():
  v5p = targets.parse("v5p-64")  # v5p counts TensorCores, two per chip.
  assert (v5p.chips, v5p.topology, v5p.chip.device_kind, v5p.hosts) == (32, "2x4x4", "TPU v5", 8)
  v5e = targets.parse("v5litepod-256")  # v5e counts chips.
  assert (v5e.chips, v5e.topology, v5e.hosts) == (256, "16x16", 32)
  assert targets.parse("v4-32").topology == "2x2x4" and targets.parse("v6e-64").chips == 64
  h100 = targets.parse("h100")  # One host of 8 GPUs.
  assert (h100.name, h100.chips, h100.topology) == ("h100-8", 8, "1x1x8")
  for name in targets.names():
    assert targets.parse(name).name == name
  for bad in ("v5p-6", "v3-8", "v5e-4", "cpu", "h100-3"):
    with pytest.raises(ValueError, match="not an accelerator type this plan knows"):
      targets.parse(bad)


def test_collective_bytes_reads_the_hlo():
  hlo = ("  %ar = (f32[2,3]{1,0}, bf16[4]{0}, /*index=2*/f32[8]{0}) all-reduce(%a, %b, %c)\n"
         "  %ags = (bf16[4]{0}, bf16[16]{0}) all-gather-start(%x), dimensions={0}\n"
         "  %rs = f32[16]{0} reduce-scatter(%y), dimensions={0}\n"
         "  %sum = f32[10]{0} add(%y, %z)\n")
  # The tuple all-reduce delivers all its results; an async start its largest element.
  assert memory_plan.collective_bytes(hlo) == (24 + 8 + 32) + 32 + 64


@pytest.fixture(scope="module")
def chip():
  return targets.devices(targets.parse(SMALLEST))


@needs_libtpu
def test_train_step_compiles_the_splash_kernel_for_tpu(chip):
  # Patches of one pixel: 1 class token + 255 inputs = 256 tokens, splash's 128-token tiles.
  # Teacher forcing: the smallest step that runs the backbone forward and backward.
  config = F.tiny_config(**{"model.patch_size": 1, "model.backbone.attention": "splash",
                            "model.backbone.dtype": "bfloat16", "train.batch_size": 2,
                            "rollout.mode": "teacher"})
  r = memory_plan.plan(config, 1, {"data": 1}, devices=chip, budget_gib=16)
  assert r["platform"] == "tpu" and r["device_kind"] == "TPU v5 lite"
  assert r["attention"] == "splash"
  # Forward and backward kernels are Mosaic calls; in interpret mode there would be none.
  assert r["kernel_calls"] >= 2, r["kernel_calls"]
  assert r["peak"] >= r["arguments"] >= r["params"] + r["optimizer"] + r["ema"] > 0
  assert r["temp"] > 0 and r["fits"]


@needs_libtpu
def test_sampler_compiles_for_tpu_with_its_kv_cache(chip):
  from pra_jax.sampling import ar_loop

  config = F.tiny_config()
  settings = ar_loop.SampleSettings(num_steps=2, solver="euler", cfg=2.0,
                                    cfg_schedule="constant", temperature=1.0, min_steps=0)
  r = memory_plan.plan_sampler(config, chip, 3, settings, costs=False)
  b = config.model.backbone
  slots = b.num_class_tokens + (config.data.image_size // config.model.patch_size) ** 2 - 1
  itemsize = np.dtype(b.dtype).itemsize
  # Keys and values of every layer for 2 x 3 guided rows.
  assert r["rows"] == 6
  assert r["kv_cache"] == 2 * b.depth * 6 * slots * b.width * itemsize
  assert r["device_kind"] == "TPU v5 lite" and r["peak"] >= r["weights"] > 0
  assert r["temp"] > 0
