"""Backbones: loading real checkpoints, building tiny ones, processors, last-token embeddings."""
