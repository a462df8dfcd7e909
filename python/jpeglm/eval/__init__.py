"""Evaluation: metrics, judges, FID, video."""
