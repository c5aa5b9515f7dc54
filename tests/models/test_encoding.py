"""Last-token pooling, placeholder handling, and batched encoding equal to one item at a time."""

from __future__ import annotations

import numpy as np
import torch

from unime_assets.models.encoding import ImageLoader, Item, encode_items, last_token_pool, model_text
from unime_assets.models.loading import load_model


def test_last_token_pool_left_and_right_padding():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(last_token_pool(h, left), h[:, -1])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert torch.equal(last_token_pool(h, right), torch.stack([h[0, 1], h[1, 2]]))


def test_placeholder_becomes_image_token_only_with_an_image():
    text = "<|image_1|>\nRepresent the given image.\n"
    assert model_text(text, True, "<|image_pad|>") == "<|image_pad|>\nRepresent the given image.\n"
    assert model_text(text, False, "<|image_pad|>") == "\nRepresent the given image.\n"


def test_batched_encoding_equals_single(tiny_qwen2vl, settings):
    from unime_assets.data.mmeb import load_train

    lm = load_model(tiny_qwen2vl)
    train = load_train(settings.train_root, settings.train_subset_names)
    items = [Item(t, p) for t, p in train.select("qry", "qry_image_path").head(6).iter_rows()]
    items += [Item(t, p) for t, p in train.select("pos_text", "pos_image_path").tail(6).iter_rows()]
    images = ImageLoader(settings.train_image_root)
    batched = encode_items(lm.model, lm.processor, items, images, lm.image_token, batch_size=5, progress=False)
    single = np.concatenate([encode_items(lm.model, lm.processor, [it], images, lm.image_token, progress=False)
                             for it in items])  # fmt: skip
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
