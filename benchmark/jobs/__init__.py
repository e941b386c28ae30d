"""The grid as data: protocol files, sweeps, and their expansion into jobs with identity hashes
and the data each needs. May import training, models, data, store and core."""
