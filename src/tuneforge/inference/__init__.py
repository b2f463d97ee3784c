"""Inference on base models and fine-tuned runs: loading, chat generation, merged export."""
