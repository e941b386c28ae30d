"""`benchmark perf`: throughput, stage times, packing and memory of the training and evaluation
paths on this machine. May import training, models, data and core."""
