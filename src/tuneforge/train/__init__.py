"""Training: the SFT recipe (one loop for CLI, job worker and UI) and its helpers."""
