"""Checkpoints: training checkpoints (DCP), HF folders, loading a model for sampling."""
