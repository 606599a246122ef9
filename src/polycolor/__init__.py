"""polycolor: fill polygon outlines with a requested colour, as a reproducible DVC + PyTorch + MLflow pipeline."""
