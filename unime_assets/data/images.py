"""Image paths and loading, shared by the MMEB readers, the synthetic data and the encoders.

MMEB stores image paths relative to an image root (`""` = no image). Real archives are unpacked
inconsistently (with or without an `images/` level), so resolution tries the documented fallbacks.
Paths come from data files, so a path may never leave its root (no absolute paths, no `..`,
no symlinks pointing outside).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

_IMAGES_PREFIX = "images/"


def _candidates(root: Path, rel: str, fallbacks: bool) -> list[Path]:
    out = [root / rel]
    if fallbacks:
        out.append(root / "images" / rel)
        if rel.startswith(_IMAGES_PREFIX):
            out.append(root / rel[len(_IMAGES_PREFIX) :])
    # keep order, drop duplicates (e.g. a rel that is exactly "images/...")
    return list(dict.fromkeys(out))


def resolve_image_path(root: str | os.PathLike, rel: str, *, fallbacks: bool = True) -> Path:
    """Resolve the MMEB relative image path `rel` under `root` to an existing file.

    `rel == ""` means "no image" in MMEB; the caller must handle it, so it is an error here.
    Tries `root/rel`, then (with `fallbacks`) `root/images/rel` and `root/rel` without a leading
    `images/`. Returns the resolved path (symlinks followed).

    Raises ValueError if `rel` is empty or absolute, or any candidate resolves outside `root`;
    FileNotFoundError (naming rel, root and the candidates tried) if no candidate exists.
    """
    if not isinstance(rel, str) or rel == "":
        raise ValueError(f"empty image path under root {str(root)!r}: '' means 'no image' and has no file")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise ValueError(f"image path {rel!r} is absolute; MMEB paths must be relative to root {str(root)!r}")
    root_p = Path(root)
    root_res = root_p.resolve()
    tried: list[str] = []
    for cand in _candidates(root_p, rel, fallbacks):
        resolved = cand.resolve()
        # Checked for every candidate, existing or not: an escaping path is malformed data, not a miss.
        if not resolved.is_relative_to(root_res):
            raise ValueError(
                f"image path {rel!r} resolves to {str(resolved)!r}, outside the image root {str(root_res)!r}"
            )
        tried.append(str(cand))
        if resolved.is_file():
            return resolved
    raise FileNotFoundError(f"image {rel!r} not found under root {str(root_p)!r}; tried {tried}")


def load_image(path: str | os.PathLike, resize: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as RGB; `resize=(width, height)` resizes with BICUBIC.

    Truncated files raise (PIL's default): the global `ImageFile.LOAD_TRUNCATED_IMAGES` is left
    untouched, since flipping it would silently change every other reader in the process.
    """
    with Image.open(path) as im:
        im.load()  # read fully now so the file handle is closed on return
        rgb = im.convert("RGB")
    if resize is not None:
        w, h = resize
        if w <= 0 or h <= 0:
            raise ValueError(f"resize must be positive (width, height), got {resize!r}")
        if rgb.size != (w, h):
            rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    return rgb
