"""Image path resolution (MMEB fallbacks, no escaping the root) and RGB loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageFile

from unime_assets.data.images import load_image, resolve_image_path


def _png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, format="PNG")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    _png(r / "Sub" / "a.png")
    _png(r / "images" / "Sub" / "b.png")  # reachable only through the `images/` fallback
    _png(r / "Sub" / "c.png")  # stored as `images/Sub/c.png`: reachable by stripping `images/`
    _png(tmp_path / "outside.png")
    return r


def test_direct_path(root: Path) -> None:
    assert resolve_image_path(root, "Sub/a.png") == (root / "Sub" / "a.png").resolve()
    assert resolve_image_path(str(root), "Sub/a.png") == (root / "Sub" / "a.png").resolve()


def test_fallbacks(root: Path) -> None:
    assert resolve_image_path(root, "Sub/b.png") == (root / "images" / "Sub" / "b.png").resolve()
    assert resolve_image_path(root, "images/Sub/c.png") == (root / "Sub" / "c.png").resolve()
    with pytest.raises(FileNotFoundError):
        resolve_image_path(root, "Sub/b.png", fallbacks=False)


def test_missing_names_rel_root_and_candidates(root: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        resolve_image_path(root, "Sub/nope.png")
    msg = str(e.value)
    assert "Sub/nope.png" in msg and str(root) in msg
    assert str(root / "images" / "Sub" / "nope.png") in msg  # the fallback candidate is listed


def test_empty_path_is_an_error(root: Path) -> None:
    with pytest.raises(ValueError, match="no image"):
        resolve_image_path(root, "")


@pytest.mark.parametrize("rel", ["../outside.png", "Sub/../../outside.png", "images/../../outside.png"])
def test_dotdot_escape_rejected_even_if_file_exists(root: Path, rel: str) -> None:
    assert (root.parent / "outside.png").is_file()
    with pytest.raises(ValueError, match="outside"):
        resolve_image_path(root, rel)


def test_absolute_path_rejected(root: Path) -> None:
    for rel in (str(root.parent / "outside.png"), str(root / "Sub" / "a.png")):
        with pytest.raises(ValueError, match="absolute"):
            resolve_image_path(root, rel)


def test_symlink_pointing_outside_rejected(root: Path) -> None:
    (root / "Sub" / "link.png").symlink_to(root.parent / "outside.png")
    (root / "linkdir").symlink_to(root.parent, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        resolve_image_path(root, "Sub/link.png")
    with pytest.raises(ValueError, match="outside"):
        resolve_image_path(root, "linkdir/outside.png")


def test_symlink_inside_root_allowed(root: Path) -> None:
    (root / "Sub" / "alias.png").symlink_to(root / "Sub" / "a.png")
    assert resolve_image_path(root, "Sub/alias.png") == (root / "Sub" / "a.png").resolve()


def test_root_itself_a_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "rootlink"
    link.symlink_to(root, target_is_directory=True)
    assert resolve_image_path(link, "Sub/a.png") == (root / "Sub" / "a.png").resolve()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1"])
def test_load_image_converts_to_rgb(tmp_path: Path, mode: str) -> None:
    p = _png(tmp_path / f"x_{mode}.png", size=(10, 7), mode=mode)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (10, 7)


def test_load_image_resize_is_width_height(tmp_path: Path) -> None:
    p = _png(tmp_path / "x.png", size=(10, 7))
    assert load_image(p, resize=(20, 14)).size == (20, 14)
    assert load_image(p, resize=(5, 9)).size == (5, 9)
    with pytest.raises(ValueError):
        load_image(p, resize=(0, 9))


def test_load_image_keeps_global_truncation_flag_and_rejects_truncated(tmp_path: Path) -> None:
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    p = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(p, format="JPEG")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is before
