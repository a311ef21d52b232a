#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it if it exists), copy this repository to
# every worker, install the requirements there, and run the same pra_jax.main command on all
# workers at once (--worker=all). Each worker is one JAX process; main.py's --distributed=on makes
# jax.distributed.initialize() find the slice's other workers from the TPU metadata.
#
# Needs: gcloud, authenticated (`gcloud auth login`), with TPU quota for ACCELERATOR in ZONE;
#        a GCS bucket for WORKDIR that the TPU VMs' service account can write; ImageNet built
#        once as TFDS array_record (see the README) at TFDS_DATA_DIR, readable from every worker.
# Run:   PROJECT=my-project ZONE=us-west4-a WORKDIR=gs://my-bucket/pra_l \
#          TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets launch/tpu_pod.sh [main.py flags...]
#        e.g. a v5e-64 slice (64 chips of 16 GiB HBM) for the PRA-L plan in the README:
#          ACCELERATOR=v5litepod-64 ... launch/tpu_pod.sh --config.sharding.mesh.fsdp=8
# Env:   PROJECT        GCP project (default: gcloud's configured project)
#        ZONE           zone with TPU capacity (required)
#        TPU_NAME       slice name (default: pra-jax)
#        ACCELERATOR    accelerator type (default: v5litepod-64)
#        RUNTIME        TPU VM software version (default: v2-alpha-tpuv5-lite; v4 slices take
#                       tpu-ubuntu2204-base, v5p v2-alpha-tpuv5)
#        SPOT           1: create the slice on spot capacity (preemptible; rerun to resume)
#        CONFIG         config file (default: configs/pra_l.py)
#        WORKDIR        gs:// run directory (required): checkpoints, TensorBoard, samples
#        TFDS_DATA_DIR  where the imagenet2012 array_record build lives
#        SKIP_SETUP     1: do not copy the repository or install (a rerun of the same code)
#        MODULE         the program (default: pra_jax.main); pra_jax.sample for FID samples:
#                         MODULE=pra_jax.sample SKIP_SETUP=1 ... launch/tpu_pod.sh \
#                           --out=/mnt/shared/pra_l_50k.npz --cfg=3.0
#                       (--out on a filesystem every worker mounts: gcsfuse, Filestore, NFS)
# Resuming: rerunning the same command continues from WORKDIR's newest checkpoint; a preempted
# worker's SIGTERM makes the run save before it stops. A sampling run skips its committed chunks.
set -euo pipefail

: "${ZONE:?set ZONE to a zone with TPU capacity, e.g. ZONE=us-west4-a}"
: "${WORKDIR:?set WORKDIR to a gs:// directory, e.g. WORKDIR=gs://my-bucket/pra_l}"
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
TPU_NAME=${TPU_NAME:-pra-jax}
ACCELERATOR=${ACCELERATOR:-v5litepod-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
CONFIG=${CONFIG:-configs/pra_l.py}
MODULE=${MODULE:-pra_jax.main}
TFDS_DATA_DIR=${TFDS_DATA_DIR:-}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR=pra_jax  # Under each worker's home directory.
JAX_VERSION=$(sed -n 's/^jax==//p' "$REPO/requirements.txt")

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" --project="$PROJECT"; }
on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

# -- 1. the slice ---------------------------------------------------------------------------
if tpu describe "$TPU_NAME" --format="value(state)" >/dev/null 2>&1; then
  state=$(tpu describe "$TPU_NAME" --format='value(acceleratorType,state)')
  echo "Reusing TPU slice $TPU_NAME ($state)"
else
  spot=()
  [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  echo "Creating TPU slice $TPU_NAME: $ACCELERATOR, runtime $RUNTIME ${spot[*]:-}"
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
fi

# -- 2. code and requirements on every worker -----------------------------------------------
if [[ "${SKIP_SETUP:-0}" != 1 ]]; then
  archive=$(mktemp -t pra_jax.XXXXXX.tar.gz)
  trap 'rm -f "$archive"' EXIT
  # Tracked and new (not ignored) files: what the run needs, without workdirs or venvs.
  (cd "$REPO" && git ls-files -co --exclude-standard -z | tar -czf "$archive" --null -T -)
  tpu scp "$archive" "$TPU_NAME:pra_jax.tar.gz" --worker=all
  on_all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && \
    tar -xzf ~/pra_jax.tar.gz -C ~/$REMOTE_DIR"
  # jax[tpu] brings the libtpu that matches the pinned jax.
  on_all "cd ~/$REMOTE_DIR && \
    python3 -m pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'"
fi

# -- 3. the same command on every worker ----------------------------------------------------
extra=""
(($# > 0)) && printf -v extra ' %q' "$@"
env_prefix="PYTHONPATH=\$HOME/$REMOTE_DIR${TFDS_DATA_DIR:+ TFDS_DATA_DIR=$TFDS_DATA_DIR}"
echo "Running $MODULE $CONFIG on every worker of $TPU_NAME -> $WORKDIR"
on_all "cd ~/$REMOTE_DIR && $env_prefix python3 -m $MODULE --config=$CONFIG \
  --workdir=$WORKDIR --distributed=on${extra}"
