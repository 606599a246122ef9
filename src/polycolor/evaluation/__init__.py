"""Evaluation: metrics defined once, the flood-fill reference, and the evaluate stage's work."""
