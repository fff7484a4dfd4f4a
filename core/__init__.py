"""Shared model and data code: the encoder interface, loading, the tiny world, prompts, the model store."""

from transformers.utils import logging as _hf_logging

# transformers' per-load progress bars drown the harness's own progress display
_hf_logging.disable_progress_bar()
