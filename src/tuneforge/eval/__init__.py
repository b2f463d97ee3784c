"""Evaluation: metrics, batched generation, prompt-engineering baselines, compare and report."""
