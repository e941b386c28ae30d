"""Reading results: the paper's tables, figures, paired comparisons, model-selection rules, sweep
reports and GradCAM. May import jobs, training, models, data, store and core; never runs jobs."""
