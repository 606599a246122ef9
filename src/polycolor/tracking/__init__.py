"""MLflow at the edge, one concept per module: store (where, probe, retries, experiment), lineage (git, platform,
run.json), datasets (DVC-hashed inputs), eval_runs (the evaluation run behind a metrics file), outage (a blinking
server during training). Import from the modules; nothing is re-exported here."""
