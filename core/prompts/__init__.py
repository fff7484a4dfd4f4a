"""Prompt sources for shallow/training prompts: text files, Hugging Face datasets, or the embedded generator."""

from .sources import HFDatasetPrompts, PromptSource, SyntheticPrompts, TextFilePrompts, make_prompt_source
from .synthetic import generate_synthetic_prompts

__all__ = [
    "PromptSource",
    "TextFilePrompts",
    "HFDatasetPrompts",
    "SyntheticPrompts",
    "make_prompt_source",
    "generate_synthetic_prompts",
]
