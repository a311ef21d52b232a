"""Studies of trained runs (the programs gap.py, ablate.py and probe.py run them):

  rollout_gap.py       the train-inference gap: head loss on teacher vs rolled-out inputs
  input_mode_study.py  the study of rollout.mode: trains one run per mode, scores, tabulates
  linear_probe.py      a linear probe of the frozen backbone's features
  study_probes.py      the ablation study's probes of every run (ablate --probe_layers), cached
  report.py            the tables and sample panels they write
"""
