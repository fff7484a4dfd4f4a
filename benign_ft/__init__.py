"""Benign fine-tuning: contrastive fine-tuning of the text encoder against a frozen (image or paired) tower."""
