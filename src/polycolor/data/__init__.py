"""The Ayna layout, the synthetic generator, and the work of the ingest and augment stages."""
