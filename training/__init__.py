"""Training half of the early-exit long-tailed classifier: `python -m training --help`."""
