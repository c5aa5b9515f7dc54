"""Bad configuration fails early with a message naming what is wrong."""

from __future__ import annotations

import pytest
import yaml

from unime_assets.config import load_settings
from unime_assets.models.loading import check_checkpoint_dir


def _write(tmp_path, data):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base(tmp_path):
    return {"train_root": str(tmp_path), "train_image_root": str(tmp_path), "eval_root": str(tmp_path),
            "eval_image_root": str(tmp_path), "retriever": {"path": "x"}, "judge": {"path": "y"},
            "embedder_base": {"path": "z"}, "artifacts_root": str(tmp_path / "a")}  # fmt: skip


def test_unknown_subset_is_rejected_with_valid_names(tmp_path):
    data = {**_base(tmp_path), "catalog": "mmeb", "train_subsets": ["MSCOCO", "ImageNet1K"]}
    with pytest.raises(ValueError, match=r"ImageNet1K.*valid names.*ImageNet_1K"):
        load_settings(_write(tmp_path, data))
    data = {**_base(tmp_path), "catalog": "synthetic", "eval_subsets": ["SynColor", "Nope"]}
    with pytest.raises(ValueError, match="Nope"):
        load_settings(_write(tmp_path, data))


def test_misspelt_key_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="embeder"):
        load_settings(_write(tmp_path, {**_base(tmp_path), "embeder": {"steps": 1}}))
    with pytest.raises(FileNotFoundError, match="make demo"):
        load_settings(tmp_path / "absent.yaml")


def test_missing_model_paths_name_the_role(tmp_path):
    with pytest.raises(FileNotFoundError, match="'judge'.*does-not-exist"):
        check_checkpoint_dir(tmp_path / "does-not-exist", "judge")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        check_checkpoint_dir(tmp_path / "empty", "retriever")
    with pytest.raises(ValueError, match="no model path configured for 'embedder base'"):
        check_checkpoint_dir(None, "embedder base")
    s = load_settings(_write(tmp_path, {**_base(tmp_path), "judge": {}}))
    with pytest.raises(ValueError, match="judge.path"):
        _ = s.judge_path


def test_overrides_merge_deeply(tmp_path):
    s = load_settings(_write(tmp_path, _base(tmp_path)), {"embedder": {"steps": 7}})
    assert s.embedder.steps == 7 and s.embedder.temperature == 0.02 and s.embedder.k_negatives == 8
    assert s.mining.beta == 0.01 and s.mining.step == 5 and s.mining.n_negatives == 10 and s.retrieval.top_k == 50
