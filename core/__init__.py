"""Shared model and data code: the encoder interface, loading, the tiny world, prompts, the model store."""

from transformers.utils import logging as _hf_logging

# transformers' per-load progress bars drown the harness's own progress display
_hf_logging.disable_progress_bar()

import torch as _torch

# Gradients of tiny models under an L1 (MAE) attack fall into float32's denormal range, where CPU
# arithmetic is ~4× slower (a tiny-clip MAE attack: 234 s, 56 s flushed, same model to 3 decimals).
# Set on import so that every entry point (jobs, tests, benchmarks) computes with the same numbers.
_torch.set_flush_denormal(True)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed activations instead of handing them back to the OS. By default it mmaps
    blocks above a threshold that only adapts after frees and trims the heap top eagerly, so the first
    pass over 4,000 prompts in a process page-faults ~13 GB (tiny-clip features: 11 s, 6 s with this),
    which alone put a fresh `job=scan` of a benign model over a minute. Other C libraries: no-op."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for this setting
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


_keep_freed_memory()
