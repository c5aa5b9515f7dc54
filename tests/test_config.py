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


def _judges(tmp_path, judges, **extra):
    data = {k: v for k, v in _base(tmp_path).items() if k != "judge"}
    return load_settings(_write(tmp_path, {**data, "judges": judges, **extra}))


def test_a_named_list_of_judges_and_the_single_judge_of_older_profiles(tmp_path):
    s = _judges(tmp_path, [{"name": "qwen25vl", "path": "/m/qwen", "dtype": "bfloat16"},
                           {"name": "internvl3_8b", "path": "/m/ivl", "family": "internvl", "backend": "vllm"}])  # fmt: skip
    assert s.judge_names == ["qwen25vl", "internvl3_8b"] and s.mining_judge == "qwen25vl"
    assert str(s.judge_checkpoint("internvl3_8b")) == "/m/ivl" and s.judge_spec("internvl3_8b").backend == "vllm"
    assert s.judge.path == "/m/qwen" and str(s.judge_path) == "/m/qwen"  # `judge` mirrors the first judge
    assert load_settings(_write(tmp_path, s.model_dump(mode="json"))).judges == s.judges  # a dump loads back
    legacy = load_settings(_write(tmp_path, _base(tmp_path)))
    assert legacy.judge_names == ["judge"] and str(legacy.judge_checkpoint("judge")) == "y"
    boot = _judges(tmp_path, [{"name": "a", "path": "/base"}], bootstrap={"enabled": True})
    assert boot.judge_checkpoint("a") == boot.artifacts_root / "judge_model" / "a"
    assert _judges(tmp_path, [{"name": "a"}, {"name": "b"}], mining={"judge": "ensemble"}).mining_judge == "ensemble"
    # the ablation variants of the judge comparison, as settings overrides that load
    variants = s.judge_variants()
    assert list(variants) == ["judge:qwen25vl", "judge:internvl3_8b", "judge:ensemble"]
    path = _write(tmp_path, s.model_dump(mode="json"))
    assert [load_settings(path, o).mining_judge for o in variants.values()] == ["qwen25vl", "internvl3_8b", "ensemble"]


@pytest.mark.parametrize(("judges", "extra", "message"), [
    ([{"name": "a"}, {"name": "a"}], {}, r"judge name\(s\) \['a'\] appear more than once"),
    ([{"name": "ensemble"}], {}, "reserved for the judge ensemble"),
    ([{"name": "Qwen 7B"}], {}, "name"),
    ([{"name": "a", "family": "llava"}], {}, "family"),
    ([{"name": "a", "dtype": "fp8"}], {}, "dtype"),
    ([{"name": "a"}], {"mining": {"judge": "b"}}, r"mining.judge: 'b' is neither a judge of this profile \['a'\]"),
    ([{"name": "a"}], {"ensemble": {"judges": ["a", "c"]}}, r"ensemble.judges: unknown judge\(s\) \['c'\]"),
    ([{"name": "a"}], {"ensemble": {"rule": "median"}}, "rule"),
    ([{"name": "a", "path": "/x"}], {"judge": {"path": "/y"}}, "either `judges` or the single `judge`"),
    ([], {}, "configure `judges`"),
])  # fmt: skip
def test_bad_judge_settings_name_the_problem(tmp_path, judges, extra, message):
    with pytest.raises(ValueError, match=message):
        _judges(tmp_path, judges, **extra)
    s = _judges(tmp_path, [{"name": "a"}])
    with pytest.raises(ValueError, match=r"judge 'b' is not in the settings profile"):
        s.judge_spec("b")
