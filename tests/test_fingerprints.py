"""The one fingerprint rule: checkpoints, files, images and fields, as every cache and shard key uses them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from unime_assets import fingerprints as fpm
from unime_assets.fingerprints import (
    ImageDigests,
    checkpoint_fingerprint,
    file_digest,
    files_stat_fingerprint,
    hash_fields,
    item_digest,
)


def test_fields_are_length_prefixed():
    assert hash_fields("ab", "c") != hash_fields("a", "bc")
    assert hash_fields("a", "") != hash_fields("a")
    assert hash_fields(b"x", 1) == hash_fields("x", "1")  # str() of non-bytes, bytes as they are
    assert item_digest("q", "") != item_digest("q", "d1") != item_digest("q2", "d1")


def test_checkpoint_fingerprint_changes_with_config_or_weights(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"a": 1}')
    (ckpt / "model.safetensors").write_bytes(b"w" * 100)
    fp = checkpoint_fingerprint(ckpt)
    assert checkpoint_fingerprint(ckpt) == fp
    (ckpt / "config.json").write_text('{"a": 2}')
    fp2 = checkpoint_fingerprint(ckpt)
    assert fp2 != fp
    (ckpt / "model.safetensors").write_bytes(b"v" * 100)  # same size, new content
    assert checkpoint_fingerprint(ckpt) != fp2
    with pytest.raises(FileNotFoundError):
        checkpoint_fingerprint(Path(tmp_path / "nope"))


def test_checkpoint_fingerprint_is_content_not_path_and_ignores_resume_states(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text("{}")
    (a / "sub" / "preprocessor.json").write_text("{}")  # nested files are part of the model
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert checkpoint_fingerprint(a) == checkpoint_fingerprint(b)
    (b / "sub" / "preprocessor.json").write_text('{"x": 1}')
    assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)
    before = checkpoint_fingerprint(a)
    (a / "checkpoints" / "step00000002").mkdir(parents=True)  # DeepSpeed resume states
    (a / "checkpoints" / "step00000002" / "state.pt").write_bytes(b"optimizer")
    (a / ".lock").write_text("")
    assert checkpoint_fingerprint(a) == before


def test_sampled_mode_sees_weight_changes(tiny_qwen25vl, tmp_path, monkeypatch):
    monkeypatch.setattr(fpm, "FULL_HASH_MAX_BYTES", 1024)  # force the sampled path on a small checkpoint
    monkeypatch.setattr(fpm, "SAMPLE_BLOCK", 4096)
    judge2 = tmp_path / "judge2"
    shutil.copytree(tiny_qwen25vl, judge2)
    before = checkpoint_fingerprint(judge2)
    assert before == checkpoint_fingerprint(tiny_qwen25vl)  # content, not path
    weights = next(judge2.glob("*.safetensors"))
    tensors = load_file(weights)
    tensors = {k: v * 1.01 if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    after = checkpoint_fingerprint(judge2)
    assert after != before
    (judge2 / "chat_template.jinja").write_text("{{ messages }}")  # a changed template is a changed judge
    assert checkpoint_fingerprint(judge2) not in (before, after)


def test_file_digest_is_remembered_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 100)
    d = file_digest(f)
    st = f.stat()
    f.write_bytes(b"v" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: not re-read in this process
    assert file_digest(f) == d
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert file_digest(f) != d


def test_image_digests_are_of_the_bytes_and_persist(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    (root / "a.png").write_bytes(b"one")
    (root / "b.png").write_bytes(b"one")
    cache = tmp_path / "cache" / "digests.parquet"
    dig = ImageDigests(root, cache)
    assert dig("a.png") == dig("b.png") != "" and dig("") == ""
    dig.save()
    assert cache.is_file()
    (root / "a.png").write_bytes(b"two!")  # replaced at the same path
    assert ImageDigests(root, cache)("a.png") != dig("b.png")
    with pytest.raises(FileNotFoundError):
        ImageDigests(root)("missing.png")
    cache.write_bytes(b"damaged")  # a damaged digest table only costs re-reading the images
    assert ImageDigests(root, cache)("b.png") == dig("b.png")


def test_files_stat_fingerprint_sees_added_removed_and_rewritten_files(tmp_path):
    a, b = tmp_path / "original-0.parquet", tmp_path / "original-1.parquet"
    a.write_bytes(b"1")
    fp = files_stat_fingerprint([a])
    b.write_bytes(b"2")
    assert files_stat_fingerprint([a, b]) != fp
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert files_stat_fingerprint([a]) != fp
