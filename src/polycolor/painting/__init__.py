"""Painting with a loaded model: the canonical form, snapping to the outline, and the painters built from them."""
