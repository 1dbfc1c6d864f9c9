"""Triton kernels for the inference engine and their plain-torch twins."""
