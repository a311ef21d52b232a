"""The ahead-of-time memory plan runs on the tiny config over two fake devices, from the command
line and as a function, splits the state as the mesh says, and refuses what it cannot plan."""

import json
import os
import subprocess
import sys

import pytest

from configs import tiny
from pra_jax import memory_plan as plan
from pra_jax.tools import fake_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# plan() imported by a program that set up its own fake devices before importing jax.
_API = os.path.join(REPO, "tests", "programs", "plan_two_devices.py")


@pytest.fixture(scope="module")
def outputs():
  """(CLI stdout on a pure-fsdp mesh with 2 microbatches, [plan() dict on a pure-data mesh,
  the same with 4 microbatches]), run side by side."""
  # The conftest's fast-compile XLA_FLAGS and XLA cache come with os.environ (the cache turns
  # programs another test already compiled into lookups).
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  run = lambda args: subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  cli = run(["-m", "pra_jax.tools.plan", "--config=configs/tiny.py", "--devices=2",
             "--mesh=data=1,fsdp=2,tensor=1", "--batch=8", "--accum=2", "--remat=full",
             "--budget_gib=0.5"])
  api = run([_API])
  outs = []
  for proc in (cli, api):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    outs.append(out)
  result = json.loads([l for l in outs[1].splitlines() if l.startswith("RESULT")][-1][6:])
  return outs[0], result


def _row(stdout):
  lines = [l for l in stdout.splitlines() if l.startswith("| ")]
  assert lines[0] == plan.HEADER and len(lines) == 2, stdout
  names = [n.strip() for n in plan.HEADER.strip("|").split("|")]
  return dict(zip(names, (c.strip() for c in lines[1].strip("|").split("|"))))


def test_cli_prints_a_row(outputs):
  row = _row(outputs[0])
  assert row["config"] == "tiny" and row["devices"] == "2" and row["mesh d,f,t"] == "1,2,1"
  assert row["batch/dev"] == "4" and row["accum"] == "2" and row["remat"] == "full"
  assert row["scan"] == "on"
  assert row["fits"] == "yes <= 0.5" and float(row["compile s"]) >= 0
  # What one more train.ema_decays entry costs, stated under the table: the row's one EMA.
  assert (f"EMA GiB counts 1 EMA(s): train.ema_decay's and one per train.ema_decays entry. "
          f"Each is {row['EMA GiB']} GiB per device on mesh 1,2,1") in outputs[0], outputs[0]


def test_plan_function_accounts_for_the_state(outputs):
  r = outputs[1][0]
  assert r["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1} and r["per_device_batch"] == 4
  # float32 params, replicated by pure data parallelism; the EMA is a copy; AdamW keeps two
  # moments (plus step counters).
  assert r["params"] == 4 * r["num_params"] == r["ema"]
  assert 2 * r["params"] <= r["optimizer"] <= 2 * r["params"] + 64
  assert r["arguments"] >= r["params"] + r["ema"] + r["optimizer"]
  assert r["peak"] >= r["arguments"] and r["temp"] > 0 and r["fits"]


def test_fsdp_splits_what_data_parallelism_replicates(outputs):
  row, r = _row(outputs[0]), outputs[1][0]
  for column, key in (("param GiB", "params"), ("opt GiB", "optimizer"), ("EMA GiB", "ema")):
    assert float(row[column]) * plan.GIB < 0.75 * r[key], (column, row, r)


def test_accumulation_holds_one_microbatch_of_activations(outputs):
  whole, micro = outputs[1]
  assert whole["grad_accum_steps"] == 1 and micro["grad_accum_steps"] == 4
  assert micro["per_device_batch"] == whole["per_device_batch"] == 4
  # The state is the same; the temporaries shrink although a gradient sum is added to them.
  assert micro["arguments"] == whole["arguments"]
  assert micro["temp"] < 0.8 * whole["temp"], (micro["temp"], whole["temp"])


def test_plan_needs_the_devices_it_plans_for():
  # The test process has one CPU device: asking for 4 must say how to get them, not crash.
  with pytest.raises(ValueError, match="xla_force_host_platform_device_count=4"):
    plan.plan(tiny.get_config(), 4, {"data": 4})


def test_helpers():
  assert plan.parse_mesh("data=8,fsdp=8") == {"data": 8, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="axis=size"):
    plan.parse_mesh("model=2")
  flags = fake_devices.xla_flags(64, "--xla_force_host_platform_device_count=8 --foo")
  assert flags == "--foo --xla_force_host_platform_device_count=64"


# The TPU compiler's refusal of a program over the chip's HBM, as it wrote it for PRA-L's
# sampler at 512 images per v5p chip (2026-12-06).
_OOM = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (110.11G) exceeds available HBM (95.74G).")


def test_a_program_the_compiler_refuses_for_memory_is_a_no_row(monkeypatch):
  """On a TPU target the compiler itself refuses a program larger than the chip: the plan prints
  that as a `NO` row with the compiler's line (and goes on to the next row), not a traceback."""
  import jax

  from pra_jax import train_step
  from pra_jax.sampling import ar_loop, data_parallel

  def refuse(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(_OOM)

  config = tiny.get_config()
  monkeypatch.setattr(train_step, "compile_train_step", refuse)
  r = plan.plan(config, 1, {"data": 1}, budget_gib=95.0, costs=True)
  line = plan.format_row("pra_l", r, "v5p-64")
  assert "| NO <= 95: Ran out of memory on HBM, the total memory required for HLO temporaries " \
         "(110.11G) exceeds available HBM (95.74G). |" in line, line
  assert line.count("|") == plan.HEADER.count("|"), line

  monkeypatch.setattr(data_parallel, "DataParallelGenerator", refuse)
  settings = ar_loop.SampleSettings.from_config(config.sample)
  r = plan.plan_sampler(config, jax.devices("cpu")[:1], 512, settings)
  line = plan.format_sample_row("pra_l", r, "v5p-64", 95.0)
  assert "| 512 | 1024 |" in line and "NO <= 95: Ran out of memory on HBM" in line, line
  assert line.count("|") == plan.SAMPLE_HEADER.count("|"), line

  # The real sampler fits, its cost program (the layer stack unrolled) does not: the row stands.
  monkeypatch.undo()
  monkeypatch.setattr(plan, "sampler_cost", refuse)
  r = plan.plan_sampler(config, jax.devices("cpu")[:1], 2, settings, costs=True)
  assert "refused" not in r and "cost" not in r and r["peak"] > 0, r
  assert r["cost_refused"].startswith("Ran out of memory on HBM"), r

  other = jax.errors.JaxRuntimeError("INTERNAL: something else")
  assert plan.compiler_out_of_memory(other) is None
  assert plan.compiler_out_of_memory(ValueError(_OOM)) is None


def test_the_sampler_cost_counts_every_loop_and_matches_the_model_flops():
  """sampler_cost compiles one position and one head evaluation with the stack unrolled (loops
  count once in a cost analysis); scaled by their counts, the compiled FLOPs of an image must
  agree with the analytic count of benchmarks/_flops.py (PRA-L on v5p: 2093 vs 2075 GFLOP)."""
  import jax

  from pra_jax.sampling import ar_loop
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import _flops
  finally:
    sys.path.pop(0)
  from pra_jax.sampling import annealing
  config = tiny.get_config()
  n = (config.data.image_size // config.model.patch_size) ** 2
  # The static loop (Heun: two calls a step, one on the last), and step annealing, whose while
  # loop runs each patch's own count.
  annealed = annealing.head_evaluations(6, 2, n, "heun")
  for steps, min_steps, solver, evals in ((3, 0, "heun", n * 5), (6, 2, "heun", annealed)):
    settings = ar_loop.SampleSettings.from_config(config.sample, cfg=2.0, num_steps=steps,
                                                  min_steps=min_steps, solver=solver)
    c = plan.sampler_cost(config, jax.devices("cpu")[0], 4, settings)
    assert c["positions"] == n and c["extra_head_evals"] == evals - n
    per_image = (c["positions"] * c["position"]["flops"]
                 + c["extra_head_evals"] * c["head_eval"]["flops"]) / 4
    model = _flops.sample_flops(config, steps, solver, 2.0, min_steps)["total"]
    print(f"tiny sampler {plan.head_steps(settings)}: compiled {per_image / 1e6:.2f} "
          f"MFLOP/image, model {model / 1e6:.2f}")
    assert 0.8 * model <= per_image <= 1.5 * model, (per_image, model)   # 0.96 here.
  assert plan.sampler_time_s(c, 1e12, 1e11) > 0
