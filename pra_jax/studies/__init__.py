"""Studies of trained runs: the train-inference gap, the ablation study, the linear probe, and
the tables and figures they write."""
