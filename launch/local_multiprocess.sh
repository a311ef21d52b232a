#!/usr/bin/env bash
# N processes of pra_jax.main (or pra_jax.sample) on this machine, on CPU, joined by
# jax.distributed over 127.0.0.1.
# The smallest multi-host run there is: the same code path as a TPU pod or a SLURM job, with the
# coordinator address, process count and process id given explicitly instead of detected.
#
# Needs: the packages of requirements.txt (python from $PYTHON, default `python`), a free TCP
#        port on 127.0.0.1. No accelerator: JAX_PLATFORMS=cpu.
# Run:   launch/local_multiprocess.sh NUM_PROCESSES WORKDIR [pra_jax.main flags...]
#   e.g. launch/local_multiprocess.sh 2 /tmp/pra_mp --config=configs/tiny.py
#        MODULE=pra_jax.sample launch/local_multiprocess.sh 2 /tmp/pra_mp \
#          --config=configs/tiny.py --out=/tmp/pra_mp/samples.npz
# Env:   MODULE               the program (default: pra_jax.main)
#        LOGDIR               per-process logs (default: WORKDIR/logs; WORKDIR/logs/sample
#                             for pra_jax.sample, so that training's logs stay)
#        PYTHON               interpreter (default: python)
#        PORT                 coordinator port (default: a free one)
#        DEVICES_PER_PROCESS  fake CPU devices per process (default: 1)
#        XLA_FLAGS            passed through, with the device count added
# Every process writes LOGDIR/process_<i>.log (process 0 also writes the TensorBoard
# events and checkpoints' shared files to WORKDIR). The script waits for all processes, stops the
# others when one fails or on Ctrl-C, prints the tail of a failed log, and exits non-zero then.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
NUM_PROCESSES=$1
WORKDIR=$2
shift 2
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE=${MODULE:-pra_jax.main}
PYTHON=${PYTHON:-python}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
PORT=${PORT:-$("$PYTHON" -c "$free_port")}
if [[ "$MODULE" == pra_jax.main ]]; then
  LOGDIR=${LOGDIR:-$WORKDIR/logs}
else
  LOGDIR=${LOGDIR:-$WORKDIR/logs/${MODULE##*.}}
fi
mkdir -p "$LOGDIR"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

echo "Starting $NUM_PROCESSES processes (coordinator 127.0.0.1:$PORT); logs in $LOGDIR"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  (cd "$REPO" && \
   PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu \
   XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS" \
   exec "$PYTHON" -m "$MODULE" --workdir="$WORKDIR" \
     --coordinator_address="127.0.0.1:$PORT" --num_processes="$NUM_PROCESSES" \
     --process_id="$i" "$@") >"$LOGDIR/process_$i.log" 2>&1 &
  pids+=($!)
done

# Poll until all have ended; a failure stops the rest (they would hang in a collective).
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
    else
      set +e
      wait "$pid"
      rc=$?
      set -e
      if ((rc != 0 && status == 0)); then
        status=$rc
        echo "A process exited with status $rc; stopping the others." >&2
        stop_all
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if ((${#running[@]} > 0)); then sleep 1; fi
done

if ((status != 0)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    echo "---- tail of $LOGDIR/process_$i.log ----" >&2
    tail -n 20 "$LOGDIR/process_$i.log" >&2 || true
  done
  exit "$status"
fi
echo "All $NUM_PROCESSES processes finished; logs in $LOGDIR"
