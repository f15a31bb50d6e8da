"""Serving: the classifier behind `predict`, and release export. Never imports `train`."""
