"""The accelerators a plan compiles for: each Cloud TPU accelerator type (what `gcloud compute
tpus tpu-vm create --accelerator-type` takes) mapped to its topology, its chips and the chip's
published memory, peak bf16 compute and memory bandwidth, and the compile-only devices libtpu
makes of it. Nothing here needs a TPU: libtpu (`pip install libtpu==0.0.42.1`, the version
jax[tpu] 0.10.2 pins) compiles for a topology it is only told about.

Accelerator types (Cloud TPU "TPU types and topologies",
https://cloud.google.com/tpu/docs/types-topologies): v4-N and v5p-N count TensorCores, two per
chip, so v5p-64 is 32 chips; v5litepod-N and v6e-N count chips. A chip with two TensorCores is
one JAX device (megacore), so a mesh has one device per chip.
"""

import dataclasses
import os
import re

GIB = 1024 ** 3
GB = 1000 ** 3
LIBTPU_PIN = "libtpu==0.0.42.1"


@dataclasses.dataclass(frozen=True)
class Chip:
  family: str                # The accelerator type's prefix: v4, v5litepod, v5p, v6e.
  libtpu_name: str           # What libtpu's topology names call it ("v5e:8x8").
  device_kind: str           # What jax reports for its devices.
  cores_per_type_unit: int   # TensorCores the accelerator type's number counts per chip.
  chips_per_host: tuple      # A host's block of chips (libtpu's chips_per_host_bounds).
  chip_config: str           # libtpu's chip config: one device per chip.
  hbm_bytes: int             # HBM capacity per chip.
  peak_flops: float          # Peak dense bf16 FLOP/s per chip.
  hbm_bytes_per_s: float     # HBM bandwidth per chip.
  source: str                # Where the three numbers are published.


CHIPS = {
    # https://cloud.google.com/tpu/docs/v4 ("Key specifications"): peak compute per chip
    # 275 teraflops (bf16 or int8); HBM2 capacity and bandwidth 32 GiB, 1200 GBps. Two
    # TensorCores per chip, hosts of 2x2x1 chips.
    "v4": Chip("v4", "v4", "TPU v4", 2, (2, 2, 1), "megacore", 32 * GIB, 275e12, 1200e9,
               "https://cloud.google.com/tpu/docs/v4"),
    # https://cloud.google.com/tpu/docs/v5e ("Key chip specifications"): peak compute per chip
    # (bf16) 197 TFLOPs; HBM2 capacity and bandwidth 16 GB, 819 GBps. One TensorCore per chip,
    # hosts of 8 chips (4 and 1 for the smallest slices).
    "v5litepod": Chip("v5litepod", "v5e", "TPU v5 lite", 1, (2, 4, 1), "default", 16 * GB,
                      197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    # https://cloud.google.com/tpu/docs/v5p ("Key specifications"): peak compute per chip
    # (bf16) 459 TFLOPs; HBM capacity per chip 95 GiB; HBM2e bandwidth 2765 GBps. Two
    # TensorCores per chip, hosts of 2x2x1 chips.
    "v5p": Chip("v5p", "v5p", "TPU v5", 2, (2, 2, 1), "default", 95 * GIB, 459e12, 2765e9,
                "https://cloud.google.com/tpu/docs/v5p"),
    # https://docs.cloud.google.com/tpu/docs/v6e (system architecture table): peak compute per
    # chip (bf16) 918 TFLOPs; HBM capacity per chip 32 GB; HBM bandwidth per chip 1638 GBps;
    # 8 chips per host.
    "v6e": Chip("v6e", "v6e", "TPU v6 lite", 1, (2, 4, 1), "default", 32 * GB, 918e12, 1638e9,
                "https://docs.cloud.google.com/tpu/docs/v6e"),
}

# Chips -> topology. 3-D slices (v4, v5p): the shapes of the v5p page's table (2x2x1, 2x2x2,
# 2x4x4, 4x4x4, ...) and types-topologies' "32-TensorCore configuration ... 2x2x4 (16 chips)".
# 2-D slices (v5e, v6e): the shapes the v5e and v6e pages list (1x1 ... 16x16).
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
       256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TOPOLOGIES = {"v4": _3D, "v5p": _3D, "v5litepod": _2D, "v6e": _2D}


# NVIDIA H100 SXM5 80GB through the CUDA plugin's compile-only topology (`pip install
# jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2`): the plugin compiles for a GPU it is given
# as a GpuTargetConfigProto instead of querying one. Chip numbers from NVIDIA's H100 datasheet,
# https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM): 80 GB HBM3, 3.35 TB/s,
# 1,979 TFLOP/s bf16 "with sparsity", so 989 dense. Eight GPUs per HGX host.
H100 = Chip("h100", "cuda", "NVIDIA H100 80GB HBM3", 1, (8, 1, 1), "", 80 * GB, 989e12, 3.35e12,
            "https://www.nvidia.com/en-us/data-center/h100/")
# What the compiler tiles for: compute capability 9.0, 132 SMs of 128 FP32 lanes, 50 MB L2,
# 228 KB of shared memory per SM (227 KB to one block), 64K registers, 2048 threads per SM (the
# values CUDA's device query reports for an H100 SXM5; NVIDIA Hopper tuning guide,
# https://docs.nvidia.com/cuda/hopper-tuning-guide/). cuDNN 9.8 is the version jax 0.10.2's
# CUDA 12 wheels take.
H100_TARGET_CONFIG = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3350000000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 80000000000
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CUDA_PLUGIN_PINS = "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2"


@dataclasses.dataclass(frozen=True)
class Target:
  name: str        # The accelerator type, e.g. v5p-64.
  chip: Chip
  chips: int
  topology: str    # e.g. 2x4x4.

  @property
  def hosts(self) -> int:
    per_host = self.chip.chips_per_host[0] * self.chip.chips_per_host[1] * self.chip.chips_per_host[2]
    return max(1, self.chips // per_host)


def names() -> list[str]:
  """Every accelerator type this module maps, smallest slice first within a family."""
  return ([f"{f}-{n * CHIPS[f].cores_per_type_unit}" for f in CHIPS for n in TOPOLOGIES[f]]
          + [f"h100-{n}" for n in GPU_COUNTS])


def parse(name: str) -> Target:
  """'v5p-64' -> its Target; one clear ValueError naming the types there are otherwise."""
  gpu = re.fullmatch(r"h100(?:-(\d+))?", name.strip())
  if gpu and int(gpu.group(1) or 8) in GPU_COUNTS:
    n = int(gpu.group(1) or 8)
    hosts, per_host = max(1, n // 8), min(n, 8)
    return Target(f"h100-{n}", H100, n, f"1x{hosts}x{per_host}")
  m = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", name.strip())
  chip = CHIPS.get(m.group(1)) if m else None
  units = int(m.group(2)) if m else 0
  chips, rest = divmod(units, chip.cores_per_type_unit) if chip else (0, 1)
  if chip is None or rest or chips not in TOPOLOGIES[chip.family]:
    raise ValueError(f"--target={name!r} is not an accelerator type this plan knows; expected "
                     f"'cpu', 'h100' (8 GPUs) or one of {', '.join(names())}")
  return Target(name.strip(), chip, chips, TOPOLOGIES[chip.family][chips])


def libtpu_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None


def _gpu_devices(target: Target) -> list:
  import importlib.util
  if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
    raise ValueError(f"--target={target.name} compiles with the CUDA plugin's compiler: pip "
                     f"install {CUDA_PLUGIN_PINS} (no GPU needed to compile)")
  from jax.experimental import topologies

  # "partitions x hosts x GPUs per host"; the target config stands in for a GPU to query.
  return list(topologies.get_topology_desc(
      platform="cuda", topology_name="", topology=target.topology,
      target_config=H100_TARGET_CONFIG).devices)


def devices(target: Target) -> list:
  """The target's compile-only devices, one per chip: programs compile for them, none runs."""
  if target.chip is H100:
    return _gpu_devices(target)
  if not libtpu_available():
    raise ValueError(f"--target={target.name} compiles with the TPU compiler, which needs libtpu: "
                     f"pip install {LIBTPU_PIN} (not needed for --target=cpu or on GPUs)")
  # libtpu looks for TPU hardware and peers at start-up unless told what it is; it also takes
  # a lock file that lets one process on the machine use it, which compile-only use (several
  # plans, parallel tests) does not need.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies

  chip = target.chip
  # A slice smaller than a host is one host of that shape (v5e's 1x1 and 2x2).
  shape = map(int, (target.topology + "x1").split("x")[:3])
  per_host = tuple(min(a, b) for a, b in zip(chip.chips_per_host, shape))
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=f"{chip.libtpu_name}:{target.topology}",
      chip_config_name=chip.chip_config, chips_per_host_bounds=per_host, num_slices=1)
  devs = list(desc.devices)
  if len(devs) != target.chips or devs[0].device_kind != chip.device_kind:
    raise RuntimeError(f"libtpu made {len(devs)} {devs[0].device_kind!r} devices of "
                       f"{target.name}, expected {target.chips} {chip.device_kind!r}")
  return devs
