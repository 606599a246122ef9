"""Training: the loop (Trainer) and the train stage's glue (data in, model file, metrics and MLflow run out)."""
