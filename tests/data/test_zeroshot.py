"""Zero-shot set readers on tiny fixture files in each documented layout, and their evaluation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unime_assets.data.zeroshot import (
    CompositionSet,
    RetrievalSet,
    read_flickr_coco,
    read_sharegpt4v,
    read_sugarcrepe,
    read_urban1k,
    read_zeroshot,
)


def _img(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), color).save(path)


def _png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def test_karpathy_split_uses_test_images_and_caps_captions(tmp_path):
    _img(tmp_path / "flickr30k-images" / "1.jpg", (255, 0, 0))
    _img(tmp_path / "flickr30k-images" / "2.jpg", (0, 255, 0))
    data = {"images": [
        {"filepath": "flickr30k-images", "filename": "1.jpg", "split": "test",
         "sentences": [{"raw": f"red {i}"} for i in range(6)]},
        {"filepath": "flickr30k-images", "filename": "9.jpg", "split": "train", "sentences": [{"raw": "x"}]},
        {"filepath": "flickr30k-images", "filename": "2.jpg", "split": "test",
         "sentences": [{"raw": "green a"}, {"raw": "green b"}]},
    ]}  # fmt: skip
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    ds = read_flickr_coco("coco5k", tmp_path, max_captions=5)
    assert ds.images == ["flickr30k-images/1.jpg", "flickr30k-images/2.jpg"]
    assert ds.captions == [f"red {i}" for i in range(5)] + ["green a", "green b"]
    assert ds.caption_image == [0] * 5 + [1, 1]
    assert len(read_zeroshot("flickr30k", tmp_path).captions) == 8  # Flickr keeps every caption


def test_hf_parquet_with_embedded_bytes_is_extracted_once(tmp_path):
    root = tmp_path / "flickr"
    (root / "data").mkdir(parents=True)
    table = pa.table({
        "image": [{"bytes": _png_bytes((255, 0, 0)), "path": "a.png"}, {"bytes": _png_bytes((0, 0, 255)), "path": "b.png"}],
        "text": [["a red square", "red"], ["a blue square"]],
    })  # fmt: skip
    pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="extract_dir"):
        read_flickr_coco("flickr30k", root)
    ds = read_zeroshot("flickr30k", root, extract_dir=tmp_path / "x")
    assert ds.image_root == tmp_path / "x" / "flickr30k" and len(set(ds.images)) == 2
    assert all(name.endswith(".png") for name in ds.images) and ds.caption_image == [0, 0, 1]
    assert Image.open(ds.image_root / ds.images[1]).getpixel((0, 0)) == (0, 0, 255)
    written = {n: (ds.image_root / n).stat().st_mtime_ns for n in ds.images}
    again = read_zeroshot("flickr30k", root, extract_dir=tmp_path / "x")
    assert {n: (again.image_root / n).stat().st_mtime_ns for n in again.images} == written  # not rewritten
    # the parquet replaced (rows swapped): the images follow their rows, not the earlier extraction
    pq.write_table(table.take([1, 0]), root / "data" / "test-00000-of-00001.parquet")
    swapped = read_zeroshot("flickr30k", root, extract_dir=tmp_path / "x")
    assert Image.open(swapped.image_root / swapped.images[0]).getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("case, message", [
    ("karpathy_no_filename", r"dataset_coco.json: images\[0\]: field 'filename' is missing"),
    ("karpathy_list", r"dataset_coco.json: expected the Karpathy-split object"),
    ("sharegpt_no_value", r"entry 0.conversations\[1\]: field 'value' is missing"),
    ("sharegpt_no_image", r"entry 0: field 'image' is missing"),
    ("parquet_mixed", r"1 rows embed their image and 1 give a path"),
    ("parquet_null_text", r"row 0: field 'text' is empty"),
])  # fmt: skip
def test_malformed_zero_shot_files_name_file_entry_and_field(tmp_path, case, message):
    coco = {"images": [{"filepath": "", "split": "test", "sentences": [{"raw": "x"}]}]}
    share = [{"image": "a.jpg", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}]
    if case.startswith("karpathy"):
        (tmp_path / "dataset_coco.json").write_text(json.dumps(coco if case.endswith("filename") else [coco]))
        read = lambda: read_flickr_coco("coco5k", tmp_path)  # noqa: E731
    elif case.startswith("sharegpt"):
        if case == "sharegpt_no_image":
            share = [{"conversations": [{"from": "gpt", "value": "a caption"}]}]
        (tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(share))
        read = lambda: read_sharegpt4v(tmp_path)  # noqa: E731
    else:
        (tmp_path / "data").mkdir()
        rows = ({"image": [{"bytes": _png_bytes((1, 2, 3)), "path": "a.png"}, {"bytes": None, "path": "b.png"}],
                 "text": ["one", "two"]} if case == "parquet_mixed"
                else {"image": [{"bytes": _png_bytes((1, 2, 3)), "path": "a.png"}], "text": [None]})  # fmt: skip
        pq.write_table(pa.table(rows), tmp_path / "data" / "test-00000-of-00001.parquet")
        read = lambda: read_flickr_coco("flickr30k", tmp_path, extract_dir=tmp_path / "x")  # noqa: E731
    with pytest.raises(ValueError, match=message):
        read()


def test_sharegpt4v_first_n_and_newlines(tmp_path):
    entries = []
    for i in range(4):
        _img(tmp_path / "coco" / "train2017" / f"{i}.jpg", (i * 60, 0, 0))
        entries.append({"id": str(i), "image": f"coco/train2017/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe"}, {"from": "gpt", "value": f"line one {i}\nline two"}]})  # fmt: skip
    (tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(entries))
    ds = read_sharegpt4v(tmp_path, n=3)
    assert len(ds.images) == 3 and ds.captions[1] == "line one 1 line two" and ds.caption_image == [0, 1, 2]


def test_urban1k_pairs_by_id_in_numeric_order(tmp_path):
    for i in (10, 2, 1):
        _img(tmp_path / "image" / f"{i}.jpg", (0, i * 20, 0))
        (tmp_path / "caption").mkdir(exist_ok=True)
        (tmp_path / "caption" / f"{i}.txt").write_text(f"caption {i}\nsecond line\n")
    ds = read_urban1k(tmp_path)
    assert ds.images == ["image/1.jpg", "image/2.jpg", "image/10.jpg"]
    assert ds.captions == ["caption 1", "caption 2", "caption 10"]
    (tmp_path / "caption" / "11.txt").write_text("no image")
    with pytest.raises(FileNotFoundError, match="11.jpg"):
        read_urban1k(tmp_path)


def _sugarcrepe(root: Path) -> None:
    _img(root / "val2017" / "000000000001.jpg", (200, 0, 0))
    _img(root / "val2017" / "000000000002.jpg", (0, 0, 200))
    for sub in ("replace_obj", "swap_att", "add_obj"):
        (root / f"{sub}.json").write_text(json.dumps({
            "0": {"filename": "000000000001.jpg", "caption": "a red image", "negative_caption": "a blue image"},
            "1": {"filename": "000000000002.jpg", "caption": "a blue image", "negative_caption": "a red image"},
        }))  # fmt: skip


def test_sugarcrepe_subsets_present(tmp_path):
    _sugarcrepe(tmp_path)
    ds = read_sugarcrepe(tmp_path)
    assert isinstance(ds, CompositionSet) and set(ds.subsets) == {"replace_obj", "swap_att", "add_obj"}
    assert ds.image_root == tmp_path / "val2017" and ds.subsets["swap_att"][1][1] == "a blue image"
    with pytest.raises(FileNotFoundError):
        read_sugarcrepe(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown zero-shot set"):
        read_zeroshot("imagenet", tmp_path)


def test_zero_shot_evaluation_with_the_tiny_embedder(tiny_qwen2vl, tmp_path):
    from unime_assets.evaluation.runner import ModelHandle, evaluate_composition_set, evaluate_retrieval_set

    _sugarcrepe(tmp_path / "sc")
    for i in (1, 2, 3):
        _img(tmp_path / "urban" / "image" / f"{i}.jpg", (i * 70, 255 - i * 70, 0))
        (tmp_path / "urban" / "caption").mkdir(exist_ok=True)
        (tmp_path / "urban" / "caption" / f"{i}.txt").write_text(f"a picture number {i}\n")
    model = ModelHandle(tiny_qwen2vl)
    urban = read_zeroshot("urban1k", tmp_path / "urban")
    assert isinstance(urban, RetrievalSet)
    r = evaluate_retrieval_set(model, urban, image_size=None, batch_size=4, cache_dir=tmp_path / "cache")
    assert set(r) == {f"{d}_r@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
    assert r["t2i_r@5"] == 1.0 and r["i2t_r@10"] == 1.0  # 3 items: every ground truth is in the top 5
    sc = evaluate_composition_set(model, read_zeroshot("sugarcrepe", tmp_path / "sc"), image_size=None,
                                  batch_size=4, cache_dir=tmp_path / "cache")  # fmt: skip
    assert set(sc) == {"replace_obj", "swap_att", "add_obj", "replace", "swap", "add"}
    assert all(0.0 <= v <= 1.0 for v in sc.values()) and sc["replace"] == sc["replace_obj"]
    from unime_assets.evaluation.report import zeroshot_summary, zeroshot_table

    summary = zeroshot_summary({"sugarcrepe": sc, "urban1k": r})
    assert "r_compos" in summary and "r_long" not in summary  # ShareGPT4V missing
    assert zeroshot_table({"urban1k": r}).height == 6
