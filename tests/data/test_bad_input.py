"""Bad input caught at ingestion with default settings, named by file, row and field: truncated and
garbage images, an image without its placeholder, an oversized text, invalid UTF-8; and item
failures later in the pipeline still name the rows and the path."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import unime_assets.data.validation as v
from unime_assets.config import ValidationSettings
from unime_assets.data.errors import DataValidationError
from unime_assets.data.mmeb import load_eval, load_train, read_train_subset

TRAIN = pa.schema([(c, pa.string()) for c in ["qry", "qry_image_path", "pos_text", "pos_image_path"]])
DEFAULT = ValidationSettings()  # what mmeb_train / mmeb_eval use unless configured otherwise


def _png(path: Path, seed: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((96, 96), 40 + seed).convert("RGB").save(path)
    return path.read_bytes()


def _jpeg(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, quality=95)
    return path.read_bytes()


def _write(root: Path, rows: list[dict]) -> Path:
    (root / "S").mkdir(parents=True, exist_ok=True)
    p = root / "S" / "original-0.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAIN), p)
    return p


def _row(i: int, image: str = "", text: str | None = None) -> dict:
    q = text if text is not None else (f"<|image_1|>\nq{i}\n" if image else f"q{i}\n")
    return {"qry": q, "qry_image_path": image, "pos_text": f"p{i}", "pos_image_path": ""}


def _validate(root: Path, **kw):
    df = load_train(root, ["S"], provenance=True, dedup=False)
    return v.validate_train(df, root, policy="quarantine", check_images=DEFAULT.check_images,
                            max_text_chars=DEFAULT.max_text_chars, **kw)  # fmt: skip


def test_default_image_check_reads_structure(tmp_path):
    assert DEFAULT.check_images == "verify" and DEFAULT.train_policy == "quarantine"
    png, jpg = _png(tmp_path / "img/ok.png"), _jpeg(tmp_path / "img/ok.jpg")
    (tmp_path / "img/cut.png").write_bytes(png[: len(png) // 2])  # header intact: "exists" passes it
    (tmp_path / "img/cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    (tmp_path / "img/garbage.png").write_bytes(b"\x00not an image at all" * 50)
    names = ["ok.png", "ok.jpg", "cut.png", "cut.jpg", "garbage.png"]
    file = _write(tmp_path, [_row(i, f"img/{n}") for i, n in enumerate(names)])
    res = _validate(tmp_path)
    found = res.quarantine.select("file", "row", "field", "reason").rows()
    assert found == [(str(file), r, "qry_image_path", "unreadable_image") for r in (2, 3, 4)]
    assert all(n in d for n, d in zip(names[2:], res.quarantine["detail"], strict=True))
    assert res.clean.height == 2  # the partition goes on with the good rows
    exists = v.validate_train(load_train(tmp_path, ["S"], provenance=True), tmp_path, check_images="exists")
    assert exists.counts["unreadable_image"] == 0  # the old default let cut files through


def test_image_without_placeholder_oversized_text(tmp_path):
    _png(tmp_path / "img/a.png")
    rows = [_row(0, "img/a.png"), _row(1, "img/a.png", text="no slot for the image\n"),
            _row(2, "img/a.png", text="<|image_1|> twice <|image_1|>\n"), _row(3, "", text="x" * 20_000),
            _row(4, "img/a.png", text="")]  # fmt: skip  # row 4: image only, fine
    file = _write(tmp_path, rows)
    res = _validate(tmp_path)
    assert res.quarantine.select("row", "field", "reason").rows() == [
        (1, "qry", "placeholder_mismatch"), (2, "qry", "placeholder_mismatch"), (3, "qry", "text_too_long")]  # fmt: skip
    assert "20000 characters" in res.quarantine["detail"][2] and res.quarantine["file"][0] == str(file)
    with pytest.raises(DataValidationError, match=r"row 1: field 'qry': \[placeholder_mismatch\]"):
        v.validate_train(load_train(tmp_path, ["S"], provenance=True, dedup=False), tmp_path, policy="fail")


def _bad_utf8_file(root: Path) -> Path:
    col = pa.array([b"fine\n", b"bad \xff\xfe bytes\n", b"also fine\n"], type=pa.binary()).view(pa.string())
    empty = pa.array(["", "", ""])
    (root / "S").mkdir(parents=True, exist_ok=True)
    p = root / "S" / "original-0.parquet"
    pq.write_table(pa.table({"qry": col, "qry_image_path": empty, "pos_text": ["a", "b", "c"],
                             "pos_image_path": empty}), p)  # fmt: skip
    return p


def test_invalid_utf8_is_a_finding_not_a_panic(tmp_path):
    file = _bad_utf8_file(tmp_path)
    with pytest.raises(DataValidationError, match=r"row 1: field 'qry' is not valid UTF-8") as e:
        read_train_subset(tmp_path, "S")  # without provenance: an error naming file, row, field
    assert (e.value.file, e.value.row, e.value.field) == (str(file), 1, "qry")
    res = _validate(tmp_path)
    assert res.quarantine.select("file", "row", "field", "reason").rows() == [(str(file), 1, "qry", "invalid_utf8")]
    assert res.clean["qry"].to_list() == ["fine\n", "also fine\n"] and "invalid_utf8" not in res.clean.columns


def test_invalid_utf8_in_eval_candidates(tmp_path):
    tt = pa.array([[b"gt", b"c\xff"], [b"gt2", b"ok"]], type=pa.list_(pa.binary())).view(pa.list_(pa.string()))
    (tmp_path / "E").mkdir()
    pq.write_table(pa.table({"qry_text": ["q1", "q2"], "qry_img_path": ["", ""], "tgt_text": tt,
                             "tgt_img_path": [["", ""], ["", ""]]}), tmp_path / "E" / "test-0.parquet")  # fmt: skip
    df = load_eval(tmp_path, ["E"], strict=False, provenance=True)
    res = v.validate_eval(df, tmp_path, policy="quarantine")
    assert res.quarantine.select("row", "field", "reason").rows() == [(0, "tgt_text", "invalid_utf8")]
    assert res.clean["qry_text"].to_list() == ["q2"]


def test_image_loader_and_asset_errors_name_rows_and_path(tmp_path):
    """A decoding failure after validation (check_images: none, or a file changed since) names the
    image path, and the asset layer names the rows (pair_id) and field holding it."""
    from unime_assets.defs.assets._common import naming_rows
    from unime_assets.models.encoding import ImageLoader, Item, ItemError, embed_inputs

    png = _png(tmp_path / "img/cut.png")
    (tmp_path / "img/cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ItemError, match=r"image 'img/cut.png' under .*truncated"):
        ImageLoader(tmp_path)("img/cut.png")
    table = pl.DataFrame({"pair_id": ["p0", "p1", "p2"], "qry": ["a", "<|image_1|>\nb", "c"],
                          "qry_image_path": ["", "img/cut.png", ""], "pos_text": ["x", "y", "z"],
                          "pos_image_path": ["", "", ""]})  # fmt: skip
    items = [("qry", "qry_image_path"), ("pos_text", "pos_image_path")]
    with pytest.raises(DataValidationError) as e, naming_rows("candidate_pool[S]", table, items, "pair_id"):
        ImageLoader(tmp_path)("img/cut.png")
    assert "candidate_pool[S]" in str(e.value) and "field 'qry_image_path'" in str(e.value)
    assert "pair_id ['p1']" in str(e.value) and "img/cut.png" in str(e.value)
    with pytest.raises(ItemError, match=r"0 '<\|image_1\|>' placeholders"):  # before the processor's ValueError
        embed_inputs([Item("no slot", "img/cut.png")], processor=None, images=lambda p: None, image_token="<x>")


def test_truncated_image_is_quarantined_at_mmeb_train(tmp_path, embedded_home, settings):
    """Done-when: a truncated image in a train subset, with default validation settings, is set aside
    at `mmeb_train` with its file, row and field; the partition's other rows are the asset."""
    import shutil

    import dagster as dg
    import yaml

    from unime_assets.defs.assets.data import mmeb_train
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    subset = "SynColor"
    train = tmp_path / "train"
    shutil.copytree(settings.train_root, train)
    rows = read_train_subset(train, subset, provenance=True)
    pick = rows.filter(pl.col("qry_image_path") != "").row(0, named=True)
    image = train / pick["qry_image_path"]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # cut in half: opens, fails to decode
    bad = rows.filter(pl.col("qry_image_path") == pick["qry_image_path"])
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw.update(train_root=str(train), train_image_root=str(train), artifacts_root=str(tmp_path / "assets"))
    raw.pop("validation", None)  # defaults
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    resources = {"settings": SettingsResource(settings_file=str(tmp_path / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                 "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables"))}  # fmt: skip
    with dg.instance_for_test() as instance:  # its own instance (and definitions-state storage)
        result = dg.materialize([mmeb_train], partition_key=subset, resources=resources, instance=instance)
    assert result.success
    table = pl.read_parquet(tmp_path / "tables" / "mmeb_train" / f"{subset}.parquet")
    assert table.height == rows.height - bad.height and pick["qry_image_path"] not in table["qry_image_path"]
    q = pl.read_parquet(tmp_path / "assets" / "quarantine" / "mmeb_train" / f"{subset}.parquet")
    assert set(q.select("file", "row", "field", "reason").rows()) == {
        (r["source_file"], r["source_row"], "qry_image_path", "unreadable_image") for r in bad.iter_rows(named=True)}  # fmt: skip
    meta = result.asset_materializations_for_node("mmeb_train")[0].metadata
    assert meta["validation/unreadable_image"].value == bad.height and meta["rows"].value == table.height


def test_quarantine_and_table_are_written_together_or_not_at_all(tmp_path, embedded_home, settings, monkeypatch):
    import dagster as dg
    import yaml

    from unime_assets.defs.assets.data import mmeb_train
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    lengths = sorted(read_train_subset(settings.train_root, "SynVQA")["qry"].str.len_chars().to_list())
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    assert lengths[0] < lengths[-1]
    # queries longer than the shortest are set aside, the shortest are the table
    raw.update(artifacts_root=str(tmp_path / "assets"), validation={"max_text_chars": lengths[0]})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    resources = {"settings": SettingsResource(settings_file=str(tmp_path / "s.yaml")),
                 "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                 "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables"))}  # fmt: skip
    table = tmp_path / "tables" / "mmeb_train" / "SynVQA.parquet"
    quarantine = tmp_path / "assets" / "quarantine" / "mmeb_train" / "SynVQA.parquet"

    real_write = pl.DataFrame.write_parquet

    def failing(self, file, *a, **k):  # the table's write fails (full disk) after the quarantine's
        if Path(file).name.startswith(".SynVQA.parquet") and "tables" in str(file):
            raise OSError(28, "No space left on device")
        return real_write(self, file, *a, **k)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)
    with dg.instance_for_test() as instance:
        result = dg.materialize([mmeb_train], partition_key="SynVQA", resources=resources, raise_on_error=False,
                                instance=instance)  # fmt: skip
    assert not result.success
    assert not table.exists() and not quarantine.exists()  # neither: not the quarantine table alone
    assert not list(quarantine.parent.glob(".*.tmp")) if quarantine.parent.exists() else True
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real_write)
    with dg.instance_for_test() as instance:
        assert dg.materialize([mmeb_train], partition_key="SynVQA", resources=resources, instance=instance).success
    q = pl.read_parquet(quarantine)
    assert table.exists() and q.height > 0 and set(q["reason"]) == {"text_too_long"}
    assert pl.read_parquet(table).height + q.height == len(lengths) and pl.read_parquet(table).height > 0
