"""Sweeps: experiments as grids of cells; plan, resume, launch locally or on Slurm."""
