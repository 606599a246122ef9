"""`polycolor tune`: an Optuna study whose trials are DVC experiments, tracked in MLflow (docs/experiments.md)."""
