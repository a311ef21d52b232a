"""Sampling, one module per concern:

  ar_loop.py        the autoregressive loop: KV-cached backbone, flow head, CFG, one compiled scan
  data_parallel.py  that loop over every device of every process (shard_map, weights replicated):
                    pra_jax.sample, and the grids and evals of a training run
  resumable_job.py  the job behind `python -m pra_jax.sample`: plan, chunks, SIGTERM, merge
  chunk_store.py    the job's chunk folder: manifest, committed parts, the final .npz
  grids.py          sample grids, one row per class, to PNG and the dashboard
  annealing.py      head steps falling over the patches (sample.min_steps)
  knob_sweep.py     the sweep behind `python -m pra_jax.sweep`: one restore, one compile per shape
"""
