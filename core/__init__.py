"""Shared model and data code: the encoder interface, loading, the tiny world, prompts, the model store."""

from transformers.utils import logging as _hf_logging

# transformers' per-load progress bars drown the harness's own progress display
_hf_logging.disable_progress_bar()

import torch as _torch

# Gradients of tiny models under an L1 (MAE) attack fall into float32's denormal range, where CPU
# arithmetic is ~4× slower (a tiny-clip MAE attack: 234 s, 56 s flushed, same model to 3 decimals).
# Set on import so that every entry point (jobs, tests, benchmarks) computes with the same numbers.
_torch.set_flush_denormal(True)
