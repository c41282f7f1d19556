"""Sweeps: each Hydra multirun job in its own process, resume by config hash, an end-of-sweep summary."""
