"""Bad configuration fails early with a message naming what is wrong: settings that would silently change
the method are refused at load, and a profile that cannot run (a missing model path, a corrupt
checkpoint) fails before any step of a run, naming setting and path."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from unime_assets.config import SettingsError, load_settings
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


def test_broken_yaml_and_overrides_that_are_no_mapping_name_the_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("embedder:\n  steps: 3\n lr: [1e-4\n")
    with pytest.raises(SettingsError, match=rf"(?s)settings file {p} is not valid YAML.*in \"{p}\", line 3"):
        load_settings(p)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train_root: /data/caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=rf"settings file {latin1} is not UTF-8 text"):
        load_settings(latin1)
    good = _write(tmp_path, _base(tmp_path))
    with pytest.raises(SettingsError, match=r"overrides must be a mapping.*got \['embedder'\]"):
        load_settings(good, ["embedder"])
    from unime_assets.defs.resources import SettingsResource

    with pytest.raises(SettingsError, match="overrides_yaml is not valid YAML"):
        SettingsResource(settings_file=str(good), overrides_yaml="embedder: {steps: 3").get()


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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"mining": {"beta": 1.5}}, "mining.beta must be < 1, got 1.5"),  # 100 % random fallback
        ({"mining": {"beta": -0.5}}, "mining.beta must be >= 0, got -0.5"),  # no false-negative filter
        ({"mining": {"n_negatives": 10}, "retrieval": {"top_k": 5}},
         "mining.n_negatives (10) must be <= retrieval.top_k (5)"),  # duplicate negatives
        ({"embedder": {"temperature": 0}}, "embedder.temperature must be > 0, got 0"),
        ({"embedder": {"batch_size": -4}}, "embedder.batch_size must be >= 1, got -4"),
        ({"reranker": {"steps": 0}}, "reranker.steps must be >= 1, got 0"),
        ({"embedder": {"k_negatives": 12}}, "embedder.k_negatives (12) must be <= mining.n_negatives (10)"),
        ({"evaluation": {"rerank_top_k": 0}}, "evaluation.rerank_top_k must be >= 1, got 0"),
        ({"validation": {"max_text_chars": 0}}, "validation.max_text_chars must be >= 1, got 0"),
        # ZeRO 1-3 cannot reduce a trainable vision tower across ranks: refused before any launch
        ({"embedder": {"processes": 2, "lora": {"enabled": False}}},
         "embedder: 2 processes fine-tune every weight (vision tower included), which needs embedder.zero_stage 0"),
        ({"bootstrap": {"enabled": True, "judge_processes": 2}},
         "bootstrap.judge: 2 processes fine-tune every weight (vision tower included), which needs "
         "reranker.zero_stage 0 (it is 2)"),
    ],
)  # fmt: skip
def test_out_of_range_settings_are_refused_at_load(tmp_path, override, message):
    with pytest.raises(SettingsError) as e:
        load_settings(_write(tmp_path, _base(tmp_path)), override)
    assert message in str(e.value) and "Traceback" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # one message, not a pydantic chain


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(SettingsError) as e:
        load_settings(_write(tmp_path, _base(tmp_path)), {"embedder": {"temperature": 0, "steps": 0, "lr": -1}})
    lines = str(e.value).splitlines()
    assert lines[1:] == ["  embedder.steps must be >= 1, got 0", "  embedder.lr must be > 0, got -1.0",
                         "  embedder.temperature must be > 0, got 0.0"]  # fmt: skip


def test_defaults_and_the_embedded_profiles_are_in_range(settings):
    assert settings.mining.beta == 0.01 and settings.validation.check_images == "verify"


@pytest.fixture
def profile(tmp_path, embedded_home, tiny_qwen2vl, tiny_qwen25vl):
    """The test profile with its own copies of the checkpoints (so they can be broken)."""
    raw = yaml.safe_load((embedded_home / "settings.yaml").read_text())
    raw.pop("judges", None)  # one judge, written the single-judge way so the tests can break its path
    models = tmp_path / "models"
    for key, src in (("retriever", tiny_qwen2vl), ("judge", tiny_qwen25vl), ("embedder_base", tiny_qwen2vl)):
        shutil.copytree(src, models / key)
        raw[key] = {"path": str(models / key)}
    raw["artifacts_root"] = str(tmp_path / "assets")
    return tmp_path, raw


def _resources(tmp_path, raw):
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    p = _write(tmp_path, raw)
    return {"settings": SettingsResource(settings_file=str(p)),
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
            "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables"))}  # fmt: skip


def test_missing_or_corrupt_model_fails_the_run_before_any_step(profile):
    from unime_assets.defs.assets.data import mmeb_train

    tmp_path, raw = profile
    shutil.rmtree(raw["judge"]["path"])  # a typo'd or deleted judge
    weights = next((tmp_path / "models" / "embedder_base").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a cut download
    raw["train_subsets"] = ["SynColor"]
    with dg.instance_for_test() as instance:
        result = dg.materialize([mmeb_train], partition_key="SynColor", resources=_resources(tmp_path, raw),
                                raise_on_error=False, instance=instance)  # fmt: skip
    assert not result.success
    assert result.get_asset_materialization_events() == []  # mmeb_train did not run: the run stopped first
    failure = next(e for e in result.all_events if e.event_type_value == "RUN_FAILURE" or e.is_failure)
    text = str(failure.event_specific_data.error) if failure.event_specific_data else ""
    text = text or "\n".join(str(e.message) for e in result.all_events)
    assert "judge.path" in text and raw["judge"]["path"] in text
    assert "embedder_base.path" in text and str(weights) in text and "truncated" in text


def test_preflight_names_data_roots_and_subsets(profile):
    from unime_assets.defs.preflight import problems

    tmp_path, raw = profile
    raw["eval_root"] = str(tmp_path / "nowhere")
    shutil.copytree(raw["train_root"], tmp_path / "train")
    shutil.rmtree(tmp_path / "train" / "SynShape")
    raw["train_root"] = str(tmp_path / "train")
    found = problems(load_settings(_write(tmp_path, raw)))
    assert f"eval_root: folder {tmp_path / 'nowhere'} does not exist" in found
    assert any(p.startswith("train_subsets: SynShape: no original-*.parquet under") for p in found)
    assert len(found) == 2


def test_corrupt_safetensors_load_error_names_the_file(profile):
    from unime_assets.models.loading import load_model

    tmp_path, raw = profile
    weights = next((tmp_path / "models" / "retriever").glob("*.safetensors"))
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeError, match=rf"retriever checkpoint {tmp_path / 'models' / 'retriever'}"):
        load_model(tmp_path / "models" / "retriever", role="retriever")


def test_trust_remote_code_is_read_from_one_place_by_every_loader(profile, monkeypatch):
    """judge_model and judge_scores both load the judge through load_model, which asks the one list the
    settings resource records: with the setting on, every load of the judge (and of checkpoints trained
    from it) trusts its code; nothing else does; with it off, nothing does."""
    import transformers

    from unime_assets.defs.resources import SettingsResource
    from unime_assets.judging.engines import make_engine
    from unime_assets.models.loading import load_model

    tmp_path, raw = profile
    seen: list[tuple[str, bool]] = []
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(path, *a, trust_remote_code=False, **k):
        seen.append((str(path), trust_remote_code))
        return real(path, *a, trust_remote_code=trust_remote_code, **k)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    raw["judge"]["trust_remote_code"] = True
    s = SettingsResource(settings_file=str(_write(tmp_path, raw))).get()
    make_engine(raw["judge"]["path"], s.train_image_root)  # the judge_scores path
    load_model(raw["judge"]["path"], role="judge")  # the judge_model path
    load_model(raw["retriever"]["path"], role="retriever")
    assert seen == [(raw["judge"]["path"], True), (raw["judge"]["path"], True), (raw["retriever"]["path"], False)]
    assert s.asset_dir("reranker_checkpoint") in s.remote_code_paths()  # trained from the judge
    raw["judge"]["trust_remote_code"] = False
    SettingsResource(settings_file=str(_write(tmp_path, raw))).get()
    seen.clear()
    make_engine(raw["judge"]["path"], s.train_image_root)
    assert seen == [(raw["judge"]["path"], False)]
