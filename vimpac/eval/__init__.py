"""Evaluation: multi-view scores and top-k, reports (CSV, confusion PNG), the copy baseline. Never imports `train`."""
