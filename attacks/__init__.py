"""Backdoor attacks on text encoders: Text-on-Text and Text-on-Pair, one objective L = L_benign + λ·L_backdoor with pluggable parts."""
