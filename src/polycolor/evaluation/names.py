"""The names evaluation results are filed under, in eval.json, MLflow metric keys (`<set>.<scorer>.<metric>`) and the
registry: defined once, here, so the package stage can tell the model's own figures from the reference's without
importing the scoring code."""

VAL = "val"  # the validation split
BEHAVIOUR = "behaviour"  # the behavioural shares, measured on the first evaluate.behaviour_samples of val
WORST = "worst"  # per scorer, the lowest psnr_mean and the lowest psnr_min over val and the generated sets
NET, PAINTED, FLOOD_FILL = "net", "painted", "flood_fill"
SCORERS = (NET, PAINTED, FLOOD_FILL)  # the network alone, the full painter, the classical reference
MODEL_SCORERS = (NET, PAINTED)  # the model's own figures: these reach the logged model and so the registry


def metric_set(key: str) -> str:
    """The set a metric key `<set>.<scorer>.<metric>` was computed on, which names its MLflow dataset: the key's own
    set, and val for the behavioural shares (`behaviour.net.shift`), which are measured on val."""
    block = key.split(".", 1)[0]
    return VAL if block == BEHAVIOUR else block
