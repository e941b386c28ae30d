"""Trained models outside the grid: each FINISHED job as an MLflow model (a pyfunc over its
checkpoint), registration by a selection rule that never reads an unseen target, and prediction on
image files. May import training, models, data, store and core (MLflow here and in the store)."""
