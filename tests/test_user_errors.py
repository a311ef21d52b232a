"""Every program meets bad input the same way: one line `error: ...` naming the input, exit
status 2, no traceback, nothing written. One table of cases over all the programs; they run in
one subprocess (tests/programs/user_errors.py), each program's imports paid once."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py"
RUN, TRAINED = "--workdir={d}/run", "--workdir={d}/trained"   # Nothing yet; no checkpoint.
OUT, DIGITS, BAD_WEIGHTS = "--out={d}/s.npz", "--metrics=digits", "--inception={d}/weights_bad.npz"

# (id, program, arguments, text the one line must hold). Arguments are formatted with the
# inputs' folder as {d} (built by _write_inputs) and {ro}, a folder this user cannot write.
CASES = [
    # -- training -------------------------------------------------------------------------
    ("main-misspelled-key", "pra_jax.main", [TINY, RUN, "--config.train.num_step=5"],
     "--config.train.num_step: no such config key in configs/tiny.py (did you mean "
     "train.num_steps?)"),
    ("main-no-workdir", "pra_jax.main", [TINY], "--workdir is required"),
    ("main-negative-lr", "pra_jax.main", [TINY, RUN, "--config.train.lr=-1"],
     "config train.lr must be a number in (0.0, inf), got -1.0"),
    ("main-workdir-is-a-file", "pra_jax.main", [TINY, "--workdir={d}/file.txt"], "{d}/file.txt"),
    ("main-workdir-under-a-file", "pra_jax.main", [TINY, "--workdir={d}/file.txt/run"],
     "{d}/file.txt"),
    ("main-workdir-read-only", "pra_jax.main", [TINY, "--workdir={ro}/run"], "{ro}"),
    ("main-config-missing", "pra_jax.main", ["--config=configs/nope.py", RUN],
     "configs/nope.py"),
    ("main-sigma-max-inf", "pra_jax.main",
     [TINY, RUN, "--config.rollout.sigma_max=inf"], "rollout.sigma_max"),
    ("main-sigma-nan", "pra_jax.main", [TINY, RUN, "--config.rollout.sigma=nan"],
     "rollout.sigma="),
    ("main-recon-weight-inf", "pra_jax.main",
     [TINY, RUN, "--config.loss.recon_weight=inf"], "loss.recon_weight"),
    ("main-logit-std-inf", "pra_jax.main",
     [TINY, RUN, "--config.model.head.logit_std=-inf"], "model.head.logit_std"),
    ("main-folder-of-corrupt-images", "pra_jax.main",
     [TINY, RUN, "--config.data.source=folder", "--config.data.folder={d}/corrupt"],
     "{d}/corrupt"),
    ("main-folder-missing", "pra_jax.main",
     [TINY, RUN, "--config.data.source=folder", "--config.data.folder={d}/nowhere"],
     "{d}/nowhere"),
    ("main-folder-fewer-classes", "pra_jax.main",
     [TINY, RUN, "--config.data.source=folder", "--config.data.folder={d}/two"],
     "data.num_classes is 10"),
    ("main-folder-without-images", "pra_jax.main",
     [TINY, RUN, "--config.data.source=folder", "--config.data.folder={d}/empty"],
     "{d}/empty"),
    ("main-folder-unset", "pra_jax.main", [TINY, RUN, "--config.data.source=folder"],
     "data.folder"),
    ("main-eval-folder-corrupt", "pra_jax.main",
     [TINY, RUN, "--config.data.source=folder", "--config.data.folder={d}/ten",
      "--config.data.eval_folder={d}/corrupt"], "{d}/corrupt"),
    ("main-unknown-source", "pra_jax.main", [TINY, RUN, "--config.data.source=imagenet"],
     "data.source='imagenet'"),
    ("main-positional-argument", "pra_jax.main", [TINY, RUN, "extra"], "extra"),
    ("main-heartbeat", "pra_jax.main", [TINY, RUN, "--heartbeat_timeout=0"],
     "--heartbeat_timeout"),
    ("main-unknown-flag", "pra_jax.main", [TINY, RUN, "--bogus_flag=1"],
     "bogus_flag"),
    ("main-patch-size", "pra_jax.main", [TINY, RUN, "--config.model.patch_size=5"],
     "model.patch_size=5"),
    # -- sampling -------------------------------------------------------------------------
    ("sample-no-out", "pra_jax.sample", [TINY, TRAINED], "--out"),
    ("sample-out-not-npz", "pra_jax.sample", [TINY, TRAINED, "--out={d}/s.txt"],
     "{d}/s.txt"),
    ("sample-zero-images", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--num_images=0"], "--num_images"),
    ("sample-negative-cfg", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--cfg=-2"],
     "--cfg must be a number in [0.0, inf)"),
    ("sample-nan-temperature", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--temperature=nan"], "--temperature"),
    ("sample-zero-steps", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--steps=0"], "--steps"),
    ("sample-no-checkpoint", "pra_jax.sample", [TINY, TRAINED, OUT],
     "{d}/trained"),
    ("sample-workdir-missing", "pra_jax.sample",
     [TINY, "--workdir={d}/nowhere", OUT], "{d}/nowhere"),
    ("sample-classes-not-ints", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--classes=a,b"], "--classes=a,b"),
    ("sample-class-out-of-range", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--classes=3,99"], "--classes"),
    ("sample-cfg-inf-in-config", "pra_jax.sample",
     [TINY, TRAINED, OUT, "--config.sample.cfg=inf"], "sample.cfg"),
    # -- evaluation -----------------------------------------------------------------------
    ("evaluate-no-samples", "pra_jax.evaluate", [DIGITS], "--samples"),
    ("evaluate-samples-missing", "pra_jax.evaluate", ["--samples={d}/run16/none.npz", DIGITS],
     "{d}/run16/none.npz"),
    ("evaluate-zero-bytes", "pra_jax.evaluate", ["--samples={d}/run16/empty.npz", DIGITS],
     "{d}/run16/empty.npz"),
    ("evaluate-truncated", "pra_jax.evaluate", ["--samples={d}/run16/truncated.npz", DIGITS],
     "{d}/run16/truncated.npz"),
    ("evaluate-npy-renamed", "pra_jax.evaluate", ["--samples={d}/run16/npy.npz", DIGITS],
     "{d}/run16/npy.npz"),
    ("evaluate-float-images", "pra_jax.evaluate", ["--samples={d}/run16/float.npz", DIGITS],
     "{d}/run16/float.npz"),
    ("evaluate-nchw", "pra_jax.evaluate", ["--samples={d}/run16/nchw.npz", DIGITS],
     "{d}/run16/nchw.npz"),
    ("evaluate-object-array", "pra_jax.evaluate", ["--samples={d}/run16/object.npz", DIGITS],
     "{d}/run16/object.npz"),
    ("evaluate-no-images", "pra_jax.evaluate", ["--samples={d}/run16/no_arr_0.npz", DIGITS],
     "arr_0"),
    ("evaluate-no-labels", "pra_jax.evaluate", ["--samples={d}/run16/no_labels.npz", DIGITS],
     "arr_1"),
    ("evaluate-labels-short", "pra_jax.evaluate", ["--samples={d}/run16/short_labels.npz", DIGITS],
     "arr_1"),
    ("evaluate-labels-float", "pra_jax.evaluate", ["--samples={d}/run16/float_labels.npz", DIGITS],
     "arr_1"),
    ("evaluate-larger-than-the-run", "pra_jax.evaluate", ["--samples={d}/run16/s32.npz", DIGITS],
     "{d}/run16/s32.npz"),
    ("evaluate-smaller-than-image-size", "pra_jax.evaluate",
     ["--samples={d}/loose/s8.npz", DIGITS, "--image_size=16"], "{d}/loose/s8.npz"),
    ("evaluate-rgb-digits", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", DIGITS, "--image_size=16"], "{d}/loose/rgb16.npz"),
    ("evaluate-no-run-no-image-size", "pra_jax.evaluate", ["--samples={d}/loose/s16.npz", DIGITS],
     "--image_size"),
    ("evaluate-inception-needs-ref-first", "pra_jax.evaluate",
     ["--samples={d}/run16/truncated.npz"],
     "--metrics=inception needs --ref and --inception"),
    ("evaluate-ref-missing", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", "--ref={d}/nowhere.npz", BAD_WEIGHTS],
     "{d}/nowhere.npz"),
    ("evaluate-ref-zero-bytes", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", "--ref={d}/run16/empty.npz", BAD_WEIGHTS],
     "{d}/run16/empty.npz"),
    ("evaluate-ref-without-stats-or-images", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", "--ref={d}/loose/ref_empty.npz", BAD_WEIGHTS],
     "{d}/loose/ref_empty.npz"),
    ("evaluate-inception-missing", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", "--ref={d}/loose/ref32.npz", "--inception={d}/nowhere.npz"],
     "{d}/nowhere.npz"),
    ("evaluate-inception-wrong-arrays", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", "--ref={d}/loose/ref32.npz", BAD_WEIGHTS],
     "{d}/weights_bad.npz"),
    ("evaluate-is-split-size", "pra_jax.evaluate",
     ["--samples={d}/loose/rgb16.npz", DIGITS, "--is_split_size=0"], "--is_split_size"),
    # -- studies --------------------------------------------------------------------------
    ("probe-no-workdir", "pra_jax.probe", [TINY], "--workdir"),
    ("probe-layer-not-int", "pra_jax.probe", [TINY, TRAINED, "--layer=x"], "--layer=x"),
    ("probe-layer-past-depth", "pra_jax.probe", [TINY, TRAINED, "--layer=7"], "--layer"),
    ("probe-zero-epochs", "pra_jax.probe", [TINY, TRAINED, "--epochs=0"], "--epochs"),
    ("probe-no-checkpoint", "pra_jax.probe", [TINY, TRAINED], "{d}/trained"),
    ("gap-unknown-kind", "pra_jax.gap", [TINY, TRAINED, "--kinds=teacher,bogus"],
     "bogus"),
    ("gap-zero-rollouts", "pra_jax.gap", [TINY, TRAINED, "--num_rollouts=0"],
     "--num_rollouts"),
    ("gap-couple-t0", "pra_jax.gap", [TINY, TRAINED, "--couple_t0=2"], "--couple_t0"),
    ("gap-no-checkpoint", "pra_jax.gap", [TINY, TRAINED], "{d}/trained"),
    ("ablate-unknown-mode", "pra_jax.ablate", [TINY, "--workdir={d}/study", "--modes=pra,bogus"],
     "bogus"),
    ("ablate-no-workdir", "pra_jax.ablate", [TINY], "--workdir"),
    ("ablate-workdir-is-a-file", "pra_jax.ablate", [TINY, "--workdir={d}/file.txt"],
     "{d}/file.txt"),
    ("ablate-sigma-not-a-number", "pra_jax.ablate", [TINY, "--workdir={d}/study", "--sigmas=abc"],
     "--sigmas=abc"),
    ("ablate-sigma-inf", "pra_jax.ablate", [TINY, "--workdir={d}/study", "--sigmas=inf"],
     "rollout.sigma_max"),
    ("ablate-config-missing", "pra_jax.ablate", ["--config=configs/nope.py", "--workdir={d}/study"],
     "configs/nope.py"),
    # -- tools ----------------------------------------------------------------------------
    ("params-no-config", "pra_jax.tools.params", [], "--config"),
    ("params-nan-lr", "pra_jax.tools.params", [TINY, "--config.train.lr=nan"], "train.lr"),
    ("plan-bad-mesh", "pra_jax.tools.plan", [TINY, "--mesh=data=x"], "--mesh=data=x"),
    ("plan-zero-devices", "pra_jax.tools.plan", [TINY, "--devices=0"], "--devices"),
    ("plan-mesh-past-devices", "pra_jax.tools.plan", [TINY, "--devices=1", "--mesh=data=4"],
     "needs 4 devices"),
    ("reference-images-missing", "pra_jax.tools.reference",
     ["--images={d}/nowhere", BAD_WEIGHTS, "--out={d}/ref.npz"], "{d}/nowhere"),
    ("reference-no-inception", "pra_jax.tools.reference",
     ["--images={d}/loose", "--out={d}/ref.npz"],
     "--inception"),
    ("reference-inception-missing", "pra_jax.tools.reference",
     ["--images={d}/loose/rgb16.npz", "--inception={d}/nowhere.npz", "--out={d}/ref.npz"],
     "{d}/nowhere.npz"),
    ("convert-no-pth", "pra_jax.tools.convert_inception", [], "--pth"),
    ("convert-pth-missing", "pra_jax.tools.convert_inception",
     ["--pth={d}/nowhere.pth", "--out={d}/w.npz"], "{d}/nowhere.pth"),
]


def _savez(path, **arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **arrays)


def _write_inputs(d):
  """Every bad input of the table, under d."""
  u8 = lambda *shape: np.zeros(shape, np.uint8)
  labels = np.arange(4) % 10
  (d / "file.txt").write_text("not a folder")
  for name, n in (("corrupt", 10), ("empty", 10), ("two", 2), ("ten", 10)):
    for c in range(n):
      (d / name / f"class_{c}").mkdir(parents=True)
      if name == "corrupt":
        (d / name / f"class_{c}" / "a.png").write_bytes(b"\x89PNG not really")
      elif name in ("two", "ten"):
        Image.new("L", (8, 8), 128).save(d / name / f"class_{c}" / "a.png")
  (d / "trained").mkdir()   # A workdir that holds no checkpoint.
  run, loose = d / "run16", d / "loose"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"data": {"image_size": 16, "channels": 1}}))
  (run / "empty.npz").write_bytes(b"")
  _savez(str(run / "good.npz"), arr_0=u8(4, 16, 16, 1), arr_1=labels)
  (run / "truncated.npz").write_bytes((run / "good.npz").read_bytes()[:300])
  np.save(run / "npy.npy", u8(4, 16, 16, 1))
  os.rename(run / "npy.npy", run / "npy.npz")
  _savez(str(run / "float.npz"), arr_0=np.zeros((4, 16, 16, 1), np.float32), arr_1=labels)
  _savez(str(run / "nchw.npz"), arr_0=u8(4, 1, 16, 16), arr_1=labels)
  _savez(str(run / "object.npz"), arr_0=np.array([None] * 4, object), arr_1=labels)
  _savez(str(run / "no_arr_0.npz"), images=u8(4, 16, 16, 1))
  _savez(str(run / "no_labels.npz"), arr_0=u8(4, 16, 16, 1))
  _savez(str(run / "short_labels.npz"), arr_0=u8(4, 16, 16, 1), arr_1=labels[:3])
  _savez(str(run / "float_labels.npz"), arr_0=u8(4, 16, 16, 1), arr_1=labels.astype(np.float32))
  _savez(str(run / "s32.npz"), arr_0=u8(4, 32, 32, 1), arr_1=labels)
  _savez(str(loose / "s8.npz"), arr_0=u8(4, 8, 8, 1), arr_1=labels)
  _savez(str(loose / "s16.npz"), arr_0=u8(4, 16, 16, 1), arr_1=labels)
  _savez(str(loose / "rgb16.npz"), arr_0=u8(4, 16, 16, 3), arr_1=labels)
  _savez(str(loose / "ref32.npz"), arr_0=u8(4, 32, 32, 3))
  _savez(str(loose / "ref_empty.npz"), something=np.zeros(3))
  _savez(str(d / "weights_bad.npz"), kernel=np.zeros(3, np.float32))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  _write_inputs(d)
  if os.geteuid() == 0:   # Permission bits do not bind root; procfs refuses it new entries.
    ro = "/proc/self"
  else:
    ro = str(tmp_path_factory.mktemp("read_only"))
    os.chmod(ro, 0o555)
  subst = lambda s: s.format(d=d, ro=ro)
  cases = [{"id": i, "module": m, "argv": [subst(a) for a in args], "watch": [str(d)]}
           for i, m, args, _ in CASES]
  scratch = tmp_path_factory.mktemp("driver")
  with open(scratch / "cases.json", "w") as f:
    json.dump(cases, f)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "tests/programs/user_errors.py",
                         str(scratch / "cases.json"), str(scratch / "results.json")],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(scratch / "results.json") as f:
    found = json.load(f)
  return {i: dict(found[i], expected=subst(text)) for i, _, _, text in CASES}


def test_the_table_covers_every_program():
  assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
  programs = {c[1] for c in CASES}
  assert programs == {"pra_jax.main", "pra_jax.sample", "pra_jax.evaluate", "pra_jax.probe",
                      "pra_jax.gap", "pra_jax.ablate", "pra_jax.tools.params",
                      "pra_jax.tools.plan", "pra_jax.tools.reference",
                      "pra_jax.tools.convert_inception"}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(results, case):
  r = results[case]
  lines = [l for l in r["output"].splitlines() if l.strip()]
  assert "Traceback" not in r["output"], r["output"][-3000:]
  assert r["rc"] == 2, r["output"][-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), r["output"][-3000:]
  assert r["expected"] in lines[0], (r["expected"], lines[0])
  assert not r["touched"], "the case wrote into its inputs' folder"
