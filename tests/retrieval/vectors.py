"""Vectors for the retrieval tests."""

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (what the encoders return)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
