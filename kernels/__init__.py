"""Triton kernels for the inference engine and their plain-torch twins.

Callers go through `kernels.dispatch` (Triton on CUDA, the reference elsewhere); `kernels.layout` holds the
quantized weight formats and GGUF repacking; `kernels.reference` the plain-torch twins. One file per kernel:
`flash_prefill`, `paged_decode`, `kv_write`, `w4a16`, `w8a16`, `rmsnorm` (shared attention helpers in
`attention_tile`, launcher checks in `validation`). Nothing here imports the rest of Archivist, and nothing
imports Triton until a Triton kernel is actually requested.
"""
