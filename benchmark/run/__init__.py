"""Running jobs: `run_job` (claim, train, test on every target, record), `run_grid` (states,
resume, progress) and the executors (in process, worker pool, Ray). May import every part below."""
