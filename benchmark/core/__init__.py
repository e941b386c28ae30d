"""Core utilities every part uses: user-facing errors, name registries, the seven classes, result
and cache folders, source names, the machine's cores and the environment a run depends on.
Imports nothing else of `benchmark`."""
