"""The shipped protocol files (one TOML file per protocol), installed as `benchmark.protocols`."""
