"""python -m pra_jax.sample at scale: every device of every process generates its share, image k
depends only on (seed, k), and a run killed or preempted resumes to the same bytes.

One tiny checkpoint (2 training steps) serves the module. The reference is one process on one
device at batch 8; the others differ from it only in how the work is cut (2 processes x 2 fake
devices at 2 per device; batch 4 in chunks of 4 across three interrupted runs), so each must
write exactly its bytes. Every subprocess compiles with the same XLA flags (and shares the
conftest's compilation cache): the comparisons are of bytes, and flags could move a float bit.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import factories as F
from configs import tiny
from pra_jax import rng, run_record, train
from pra_jax.sampling import ar_loop, chunk_store, data_parallel, resumable_job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multiprocess.sh")
NUM_IMAGES = 48
# No --config: pra_jax.sample reads the run's own config.json, so the seed override the fixture
# trained with (an identity key: configs/tiny.py itself would be refused) is used as recorded.
COMMON = ("--steps=2", f"--num_images={NUM_IMAGES}")


def _env(**extra):
  return dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **extra)


def _start(workdir, out, log, *flags):
  """pra_jax.sample on one process and one device, its output to `log` (a pipe could fill)."""
  with open(log, "w") as f:
    return subprocess.Popen([sys.executable, "-m", "pra_jax.sample", *COMMON,
                             f"--workdir={workdir}", f"--out={out}", *flags],
                            cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def _finish(proc, log, timeout=300):
  proc.wait(timeout=timeout)
  with open(log) as f:
    text = f.read()
  assert proc.returncode == 0, text[-4000:]
  return text


def _markers(chunk_dir):
  return len(glob.glob(os.path.join(chunk_dir, "chunk_*.done.json")))


def _read(path):
  with open(path, "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny.get_config()
  config.train.num_steps = config.checkpoint.every = 2
  config.seed = 1   # As --config.seed=1 would: the run is not configs/tiny.py's.
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def runs(workdir, tmp_path_factory):
  """The reference (1 process x 1 device, batch 8) and 2 processes x 2 devices (2 per device),
  run side by side."""
  root = tmp_path_factory.mktemp("samples")
  ref_out, mp_out = str(root / "ref.npz"), str(root / "mp" / "samples.npz")
  ref = _start(workdir, ref_out, str(root / "ref.log"), "--per_device_batch=8")
  mp = subprocess.Popen(
      ["bash", LAUNCH, "2", workdir, *COMMON, f"--out={mp_out}", "--per_device_batch=2"],
      cwd=REPO, env=_env(MODULE="pra_jax.sample", DEVICES_PER_PROCESS="2",
                         LOGDIR=str(root / "mp_logs")),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  mp_launcher = mp.communicate(timeout=300)[0]
  assert mp.returncode == 0, mp_launcher[-6000:]
  _finish(ref, str(root / "ref.log"))
  logs = [_read(str(root / "mp_logs" / f"process_{i}.log")).decode() for i in range(2)]
  return {"ref": ref_out, "mp": mp_out, "mp_logs": logs, "root": root}


def test_two_processes_of_two_devices_write_the_bytes_of_one_device(runs):
  assert _read(runs["mp"]) == _read(runs["ref"])
  assert _read(runs["mp"][:-4] + ".png") == _read(runs["ref"][:-4] + ".png")
  with np.load(runs["ref"], allow_pickle=False) as f:
    images, labels = f["arr_0"], f["arr_1"]
  assert images.shape == (NUM_IMAGES, 16, 16, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 5)[:NUM_IMAGES])
  assert len({im.tobytes() for im in images}) == NUM_IMAGES  # No two images alike.

  # Each process wrote only its own share: per chunk, two parts of disjoint images.
  chunk_dir = runs["mp"][:-4] + "_chunks"
  for c in range(chunk_store.num_chunks(8, NUM_IMAGES)):
    parts = [np.load(os.path.join(chunk_dir, chunk_store.part_name(c, p, 2)))["index"]
             for p in range(2)]
    assert all(len(p) == 4 for p in parts), parts
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(8 * c, 8 * c + 8))
  # Progress with images/s and ETA, from process 0 only.
  for i, log in enumerate(runs["mp_logs"]):
    assert "process %d/2; 2 local / 4 global devices" % i in log, log[-3000:]
    assert ("images/s, ETA" in log) == (i == 0), log[-3000:]
  assert "2 per device x 4 devices on 2 processes = batch 8" in runs["mp_logs"][0]


def test_killed_then_preempted_run_resumes_to_the_same_bytes(workdir, runs, tmp_path):
  out, chunk_dir = str(tmp_path / "s.npz"), str(tmp_path / "s_chunks")
  flags = ("--per_device_batch=4", "--chunk_size=4")
  count = NUM_IMAGES // 4

  def run_until(log, new_chunks, sig):
    before = _markers(chunk_dir)
    proc = _start(workdir, out, log, *flags)
    deadline = time.time() + 300
    while _markers(chunk_dir) < before + new_chunks:
      assert proc.poll() is None, _read(log).decode()[-4000:]
      assert time.time() < deadline
      time.sleep(0.002)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    done = _markers(chunk_dir)
    assert done < count, "the run finished before the signal: the test proves nothing"
    return proc.returncode, _read(log).decode(), before, done

  rc, _, _, killed_at = run_until(str(tmp_path / "1.log"), 1, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  rc, log, before, stopped_at = run_until(str(tmp_path / "2.log"), 1, signal.SIGTERM)
  assert before == killed_at
  assert f"{killed_at} of {count} chunks of 4 already done" in log, log[-3000:]
  assert rc == resumable_job.EXIT_PREEMPTED and "Preempted:" in log, log[-3000:]
  assert not os.path.exists(out)

  log = _finish(_start(workdir, out, str(tmp_path / "3.log"), *flags), str(tmp_path / "3.log"))
  assert f"{stopped_at} of {count} chunks of 4 already done" in log, log[-3000:]
  # Batch 4 in chunks of 4 over three runs: the reference's batch-8 bytes.
  assert _read(out) == _read(runs["ref"])
  assert _read(out[:-4] + ".png") == _read(runs["ref"][:-4] + ".png")


def test_other_settings_in_the_same_chunk_folder_are_refused(workdir, runs):
  config = run_record.config_or_recorded(None, workdir)
  assert config.seed == 1 and config.train.weight_decay_on == tiny.get_config().train.weight_decay_on
  with pytest.raises(run_record.ConfigMismatch, match="seed: 1 -> 0"):
    resumable_job.sample_to_npz(tiny.get_config(), workdir, runs["ref"], num_images=NUM_IMAGES)
  out = runs["ref"]
  kwargs = dict(num_images=NUM_IMAGES, steps=2)
  with pytest.raises(chunk_store.SettingsMismatch, match=r"seed: 0 there, 1 now") as e:
    resumable_job.sample_to_npz(config, workdir, out, seed=1, cfg=3.0, **kwargs)
  assert "ar_loop.cfg: 2.0 there, 3.0 now" in str(e.value)
  with pytest.raises(chunk_store.SettingsMismatch, match=r"ar_loop.num_steps: 2 there, 4 now"):
    resumable_job.sample_to_npz(config, workdir, out, num_images=NUM_IMAGES)
  with pytest.raises(chunk_store.SettingsMismatch, match="weights: \"ema\" there, \"raw\" now"):
    resumable_job.sample_to_npz(config, workdir, out, use_ema=False, **kwargs)
  with pytest.raises(ValueError, match=r"--checkpoint_step=1: .* holds steps \[2\]"):
    resumable_job.sample_to_npz(config, workdir, out, checkpoint_step=1, **kwargs)
  with pytest.raises(ValueError, match="must name a .npz file"):
    resumable_job.sample_to_npz(config, workdir, out[:-4] + ".png", **kwargs)
  with pytest.raises(ValueError, match="is a URL"):
    resumable_job.sample_to_npz(config, workdir, "gs://bucket/s.npz", **kwargs)
  with pytest.raises(ValueError, match="--chunk_size must be a positive integer, got 0"):
    resumable_job.sample_to_npz(config, workdir, out, chunk_size=0, **kwargs)
  manifest = json.loads(_read(os.path.join(out[:-4] + "_chunks", chunk_store.MANIFEST)))
  assert manifest["seed"] == 0 and manifest["checkpoint.step"] == 2


def test_image_k_is_keyed_by_seed_and_k_alone():
  """The data-parallel generator at batch 8 against generate_many at batch 4 and against
  ar_loop.generate given rng.example_keys for indices 3..6: the same images."""
  model = F.random_model(F.tiny_config(), seed=4)
  settings = ar_loop.SampleSettings(num_steps=2, solver="euler", cfg=2.0, cfg_schedule="linear",
                                    temperature=1.0, min_steps=0)
  seed = 5
  labels = np.array([0, 3, 7, 9, 1, 1, 4, 2], np.int32)
  generator = data_parallel.DataParallelGenerator(model, data_parallel.sampling_mesh(),
                                                  settings, 8)
  index, images = generator.local_rows(
      generator.dispatch(np.arange(8), labels, jax.random.key(seed)), np.arange(8))
  np.testing.assert_array_equal(index, np.arange(8))
  by_four = ar_loop.generate_many(model, labels, jax.random.key(seed), settings, batch_size=4)
  np.testing.assert_array_equal(by_four, images)
  middle = ar_loop.generate(model, labels[3:7], rng.example_keys(jax.random.key(seed), 4, 3),
                            settings)
  np.testing.assert_array_equal(middle, images[3:7])
  assert len({im.tobytes() for im in images}) == 8


def test_manifest_and_npz_files(tmp_path):
  folder = str(tmp_path / "chunks")
  settings = {"seed": 0, "checkpoint.step": 2, "classes": [1, 2]}
  chunk_store.check_manifest(folder, settings, write=True)
  chunk_store.check_manifest(folder, dict(settings), write=True)  # The same settings: resumed.
  with pytest.raises(chunk_store.SettingsMismatch,
                     match=r"checkpoint.step: 2 there, 4 now\).*--checkpoint_step=2"):
    chunk_store.check_manifest(folder, {**settings, "checkpoint.step": 4}, write=True)
  # A streamed entry whose blocks do not fill its shape leaves no file behind, torn or not.
  path = str(tmp_path / "x.npz")
  with pytest.raises(ValueError, match="expected 24"):
    chunk_store.write_npz(path, {"a": ((2, 3), np.float32, [np.zeros(3, np.float32)])})
  assert os.listdir(tmp_path) == ["chunks"]
  chunk_store.write_npz(path, {"a": ((2, 3), np.float32, [np.ones(3), np.zeros(3)])})
  first = _read(path)
  with np.load(path, allow_pickle=False) as f:
    np.testing.assert_array_equal(f["a"], [[1, 1, 1], [0, 0, 0]])
  time.sleep(2.1)  # Past a tick of the zip format's 2-second clock: the bytes must not move.
  chunk_store.write_npz(path, {"a": np.array([[1, 1, 1], [0, 0, 0]], np.float32)})
  assert _read(path) == first
