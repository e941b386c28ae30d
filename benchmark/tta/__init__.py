"""Test-time adaptation of trained models, and the online stream they adapt on: the contract
(base.py), one file per method (methods/), the stream (stream.py). May import `benchmark.training`,
`benchmark.data`, `benchmark.models`, `benchmark.core` (and `benchmark.jobs` for identities)."""
