"""Serving: painting files (predict), the MLflow pyfunc, the package stage and the Model Registry."""
