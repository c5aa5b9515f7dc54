"""Image checks of the validation step, once per unique path.

- "exists": the path resolves inside its root exactly like `images.resolve_image_path` (fallbacks,
  symlinks, escapes), each folder resolved once and one lstat per file in the common case;
- "verify" (the default): also PIL's header parse and `verify()` (for PNG every chunk and its CRC up
  to IEND, so a cut file fails), and for a JPEG its end-of-image marker among the last bytes (a cut
  JPEG has none); no pixel is decoded, so it costs about one read of the file;
- "open": also decodes the pixels (JPEGs at 1/8 scale, which still reads every byte).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Literal

import polars as pl
from PIL import Image

from unime_assets.data.images import resolve_image_path

ImageCheck = Literal["none", "exists", "verify", "open"]
JPEG_EOI = b"\xff\xd9"
_TAIL = 1024  # bytes searched for the end marker (encoders may pad after it)


def decode(path: Path) -> None:
    with Image.open(path) as im:
        im.draft("RGB", (64, 64))  # JPEG only: decode at 1/8 scale, still reads the whole stream
        im.load()


def verify(path: Path) -> None:
    """Raises when the file is not an image PIL reads, or its structure is cut or corrupt."""
    with Image.open(path) as im:
        fmt = im.format
        im.verify()
    if fmt in ("JPEG", "MPO"):
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - _TAIL, 0))
            if JPEG_EOI not in fh.read():
                raise OSError("no JPEG end-of-image marker: the file is truncated")


class Resolver:
    """`resolve_image_path` with its common case made cheap, same answers.

    The common case: `root/rel` is a regular file (not a symlink) whose folder, resolved, is inside
    the resolved root; then it is the path resolve_image_path returns. Folders are resolved once
    each (MMEB keeps thousands of images per folder); every other case goes to resolve_image_path.
    """

    def __init__(self, root: str | os.PathLike, fallback=resolve_image_path) -> None:
        self.root = root
        self.fallback = fallback
        self.root_res = Path(root).resolve()
        self.dirs: dict[str, Path | None] = {}

    def _dir(self, parent: str) -> Path | None:
        if parent not in self.dirs:
            d = Path(parent).resolve()
            self.dirs[parent] = d if d.is_relative_to(self.root_res) and d.is_dir() else None
        return self.dirs[parent]

    def __call__(self, rel: str) -> Path:
        if not os.path.isabs(rel):
            parent, name = os.path.split(os.path.join(self.root, rel))
            d = self._dir(parent) if name not in ("", ".", "..") else None
            if d is not None:
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(os.lstat(d / name).st_mode):
                        return d / name
        return self.fallback(self.root, rel)


_READERS = {"verify": verify, "open": decode}


def image_problems(paths: pl.Series, root: str | os.PathLike, mode: ImageCheck,
                   resolve_path=resolve_image_path) -> pl.DataFrame:  # fmt: skip
    """One row (path, reason, detail) per unique non-empty path that fails the `mode` check."""
    if mode not in ("exists", "verify", "open"):
        raise ValueError(f"check_images must be 'none', 'exists', 'verify' or 'open', got {mode!r}")
    resolve = Resolver(root, resolve_path)
    read = _READERS.get(mode)
    out: dict[str, list[str]] = {"path": [], "reason": [], "detail": []}
    for rel in paths.drop_nulls().unique().to_list():
        if rel == "":
            continue
        reason, detail = "", ""
        try:
            resolved = resolve(rel)
            if read is not None:
                read(resolved)
        except FileNotFoundError as e:
            reason, detail = "missing_image", str(e)
        except ValueError as e:  # absolute, or resolves outside the root
            reason, detail = "image_outside_root", str(e)
        except Exception as e:  # any decoder failure means training would crash on this image
            reason, detail = "unreadable_image", f"PIL cannot read {rel!r}: {type(e).__name__}: {e}"
        if reason:
            out["path"].append(rel)
            out["reason"].append(reason)
            out["detail"].append(detail)
    return pl.DataFrame(out, schema={"path": pl.String, "reason": pl.String, "detail": pl.String})
