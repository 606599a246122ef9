"""Watching the served model: one record per painted image from every face (log, observe), the reference profile
stored with each model version (profile), and the drift report against it (report)."""
