"""Readers for the zero-shot sets of UniME-V2's Table 2 (paper.md §8), from local copies in their usual formats.

Expected local layouts (one root folder per set; image paths are resolved inside it with the same
safe rules as MMEB, including the `images/` fallback):

- `flickr30k` (1K test images x 5 captions) and `coco5k` (5K test images, first 5 captions each):
  either a Karpathy split file `dataset_flickr30k.json` / `dataset_coco.json` (any `dataset_*.json`)
  whose `images[*]` have `split`, `filename`, optional `filepath` and `sentences[*].raw`; the rows
  with split "test" are used, the image at `<root>/<filepath>/<filename>`;
  or the HF parquet export used by the official eval (royokong/flickr30k_test, royokong/coco_test):
  `<root>/**/*.parquet` with columns `image` (struct of `bytes`/`path`, or a path string) and
  `text` (list of captions). Embedded image bytes are written once under `extract_dir`.
- `sharegpt4v`: `<root>/share-captioner_coco_lcs_sam_1246k_1107.json` (or the only `*.json`), a list of
  `{"image": <path relative to root>, "conversations": [human, gpt]}`; the first 1,000 entries,
  caption = the gpt turn with newlines replaced by spaces (as the official eval does).
- `urban1k`: `<root>/image/<id>.jpg` and `<root>/caption/<id>.txt` (first line is the caption).
- `sugarcrepe`: `<root>/<subset>.json` for any of add_obj, add_att, replace_obj, replace_att,
  replace_rel, swap_obj, swap_att, each `{id: {"filename", "caption", "negative_caption"}}`; the COCO
  val2017 images under `<root>/val2017/` (else `<root>/images/` or `<root>/`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from unime_assets.data.images import resolve_image_path
from unime_assets.io import atomic_path

RETRIEVAL_SETS = ("flickr30k", "coco5k", "sharegpt4v", "urban1k")
COMPOSITION_SETS = ("sugarcrepe",)
ZEROSHOT_SETS = RETRIEVAL_SETS + COMPOSITION_SETS
SUGARCREPE_SUBSETS = (
    "replace_obj",
    "replace_att",
    "replace_rel",
    "swap_obj",
    "swap_att",
    "add_obj",
    "add_att",
)
SUGARCREPE_GROUPS = {"replace": ("replace_obj", "replace_att", "replace_rel"), "swap": ("swap_obj", "swap_att"),
                     "add": ("add_obj", "add_att")}  # fmt: skip
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"


@dataclass
class RetrievalSet:
    """Images and captions; caption j describes image caption_image[j]. Paths relative to image_root."""

    name: str
    image_root: Path
    images: list[str]
    captions: list[str]
    caption_image: list[int]


@dataclass
class CompositionSet:
    """SugarCrepe: per subset, (image, positive caption, negative caption) triples."""

    name: str
    image_root: Path
    subsets: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def _check_images(image_root: Path, images: list[str], name: str) -> None:
    # Fail at read time, naming the file, rather than deep inside encoding.
    for rel in dict.fromkeys(images):
        resolve_image_path(image_root, rel)


def _retrieval(name: str, root: Path, images: list[str], captions: list[list[str]]) -> RetrievalSet:
    if not images:
        raise ValueError(f"{name}: no test images found under {root}")
    flat, owner = [], []
    for i, caps in enumerate(captions):
        if not caps:
            raise ValueError(f"{name}: image {images[i]!r} has no caption")
        flat += caps
        owner += [i] * len(caps)
    _check_images(root, images, name)
    return RetrievalSet(name, root, images, flat, owner)


def _get(entry: object, key: str, where: str, kind: type | tuple[type, ...] = str):
    """entry[key], of type `kind`; otherwise an error naming the file, the entry and the field."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: field {key!r} is missing")
    value = entry[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _karpathy(name: str, root: Path, file: Path, max_captions: int | None) -> RetrievalSet:
    data = json.loads(file.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected the Karpathy-split object with an 'images' list, got {type(data).__name__}")
    images, captions = [], []
    for i, im in enumerate(_get(data, "images", str(file), list)):
        where = f"{file}: images[{i}]"
        if _get(im, "split", where) != "test":
            continue
        rel = "/".join(p for p in (im.get("filepath", ""), _get(im, "filename", where)) if p)
        images.append(rel)
        sentences = _get(im, "sentences", where, list)
        captions.append([_get(x, "raw", f"{where}.sentences[{j}]") for j, x in enumerate(sentences)][:max_captions])
    return _retrieval(name, root, images, captions)


def _hf_parquet(
    name: str, root: Path, files: list[Path], max_captions: int | None, extract_dir: Path | None
) -> RetrievalSet:
    import pyarrow.parquet as pq

    images, captions = [], []
    embedded, by_path = 0, 0  # extracted images live under extract_dir, the others under root: not both
    for f in files:
        table = pq.read_table(f)
        missing = {"image", "text"} - set(table.column_names)
        if missing:
            raise ValueError(f"{f}: {name} parquet needs columns image and text; missing {sorted(missing)}")
        for r, row in enumerate(table.select(["image", "text"]).to_pylist()):
            img, texts = row["image"], row["text"]
            if texts is None:
                raise ValueError(f"{f}: row {r}: field 'text' is empty")
            texts = [texts] if isinstance(texts, str) else list(texts)
            if isinstance(img, dict) and img.get("bytes"):
                if extract_dir is None:
                    raise ValueError(f"{name}: {f} embeds image bytes; pass extract_dir to write them to")
                ext = Path(img.get("path") or "x.jpg").suffix or ".jpg"
                # named by content: another parquet (or a changed one) never reuses an older extraction
                rel = f"{hashlib.sha256(img['bytes']).hexdigest()[:24]}{ext}"
                dest = Path(extract_dir) / name / rel
                if not dest.is_file():
                    with atomic_path(dest) as tmp:
                        tmp.write_bytes(img["bytes"])
                embedded += 1
            else:
                by_path += 1
                rel = img.get("path") if isinstance(img, dict) else img
                if not rel:
                    raise ValueError(f"{f}: row {r}: field 'image' has neither bytes nor a path")
            images.append(rel)
            captions.append(texts[:max_captions])
    if embedded and by_path:
        raise ValueError(f"{name}: {embedded} rows embed their image and {by_path} give a path; one image root "
                         "cannot hold both (convert the set to one form)")  # fmt: skip
    return _retrieval(name, Path(extract_dir) / name if embedded else root, images, captions)


def read_flickr_coco(name: str, root: str | os.PathLike, *, max_captions: int | None = None,
                     extract_dir: str | os.PathLike | None = None) -> RetrievalSet:  # fmt: skip
    """Flickr30K or COCO 5K test (see the module docstring for the two accepted layouts)."""
    root = Path(root)
    karpathy = sorted(root.glob("dataset_*.json"))
    if karpathy:
        return _karpathy(name, root, karpathy[0], max_captions)
    parquet = sorted(root.rglob("*.parquet"))
    if parquet:
        test = [f for f in parquet if "test" in f.name] or parquet
        return _hf_parquet(name, root, test, max_captions, Path(extract_dir) if extract_dir else None)
    raise FileNotFoundError(
        f"{name}: no dataset_*.json (Karpathy split) or *.parquet (HF export) under {root}"
    )


def read_sharegpt4v(root: str | os.PathLike, n: int = 1000) -> RetrievalSet:
    root = Path(root)
    file = root / SHAREGPT4V_FILE
    if not file.is_file():
        found = sorted(root.glob("*.json"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"sharegpt4v: {SHAREGPT4V_FILE} not under {root} (and not exactly one *.json)"
            )
        file = found[0]
    entries = json.loads(file.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a JSON list of entries, got {type(entries).__name__}")
    images, captions = [], []
    for i, e in enumerate(entries[:n]):
        where = f"{file}: entry {i}"
        turns = _get(e, "conversations", where, list)
        gpt = [_get(c, "value", f"{where}.conversations[{j}]") for j, c in enumerate(turns)
               if isinstance(c, dict) and c.get("from") == "gpt"]  # fmt: skip
        if not gpt:
            raise ValueError(f"{where}: no gpt turn in 'conversations'")
        images.append(_get(e, "image", where))
        captions.append([gpt[0].replace("\n", " ")])
    return _retrieval("sharegpt4v", root, images, captions)


def _stem_key(stem: str) -> tuple[int, int | str]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def read_urban1k(root: str | os.PathLike) -> RetrievalSet:
    root = Path(root)
    cap_dir = root / "caption"
    if not cap_dir.is_dir() or not (root / "image").is_dir():
        raise FileNotFoundError(f"urban1k: expected {root}/image/ and {root}/caption/")
    stems = sorted((p.stem for p in cap_dir.glob("*.txt")), key=_stem_key)
    images, captions = [], []
    for stem in stems:
        lines = (cap_dir / f"{stem}.txt").read_text(encoding="utf-8").splitlines()
        images.append(f"image/{stem}.jpg")
        captions.append([lines[0]] if lines else [])
    return _retrieval("urban1k", root, images, captions)


def read_sugarcrepe(root: str | os.PathLike) -> CompositionSet:
    root = Path(root)
    image_root = next((d for d in (root / "val2017", root / "images") if d.is_dir()), root)
    out = CompositionSet("sugarcrepe", image_root)
    for sub in SUGARCREPE_SUBSETS:
        f = root / f"{sub}.json"
        if f.is_file():
            data = json.loads(f.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{f}: expected a JSON object of examples, got {type(data).__name__}")
            out.subsets[sub] = [(_get(v, "filename", f"{f}: example {k!r}"), _get(v, "caption", f"{f}: example {k!r}"),
                                 _get(v, "negative_caption", f"{f}: example {k!r}")) for k, v in data.items()]  # fmt: skip
            _check_images(image_root, [t[0] for t in out.subsets[sub]], f"sugarcrepe/{sub}")
    if not out.subsets:
        raise FileNotFoundError(
            f"sugarcrepe: none of {[f'{s}.json' for s in SUGARCREPE_SUBSETS]} under {root}"
        )
    return out


def read_zeroshot(name: str, root: str | os.PathLike, *, extract_dir: str | os.PathLike | None = None
                  ) -> RetrievalSet | CompositionSet:  # fmt: skip
    """Dispatch on the set name (one of ZEROSHOT_SETS)."""
    if name == "flickr30k":
        return read_flickr_coco(name, root, extract_dir=extract_dir)
    if name == "coco5k":
        return read_flickr_coco(name, root, max_captions=5, extract_dir=extract_dir)
    if name == "sharegpt4v":
        return read_sharegpt4v(root)
    if name == "urban1k":
        return read_urban1k(root)
    if name == "sugarcrepe":
        return read_sugarcrepe(root)
    raise ValueError(f"unknown zero-shot set {name!r}; expected one of {ZEROSHOT_SETS}")
