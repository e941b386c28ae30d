"""Method plugins: one file per method, each registered behind the same fit/predict interface."""
