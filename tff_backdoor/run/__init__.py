"""One run: setup, the round loop and its hooks, checkpoints, warm starts, the run directory."""
