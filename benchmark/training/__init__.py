"""Training one method: the method contract and plugin loading, the shared training loop,
augmentation, recipe, evaluation per epoch, checkpoints. May import models, data, store and core."""
