"""Inference: sampling settings, the sampling loop, decode-time weights and kernels."""
