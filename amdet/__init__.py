"""The AMDET detector: scan one text encoder against an anchor — implicit-feature inversion, stop checks, loss-landscape filter, verdict and score."""
