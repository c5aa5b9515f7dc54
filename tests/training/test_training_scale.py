"""Embedder training at scale: GradCache equals the full-batch gradient, 2 ranks (torchrun, gloo)
equal 1 rank at the same global batch, a failed run resumes from its checkpoint to the same result,
and the asset's registered model loads by alias in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import small_training_set

from unime_assets.config import LoraConfig
from unime_assets.models.encoding import ImageLoader, embed_inputs, forward_embeddings
from unime_assets.models.loading import load_model
from unime_assets.training import loop
from unime_assets.training.data import embedder_examples
from unime_assets.training.embedder import embedder_loss, train_embedder
from unime_assets.training.engine import EngineConfig
from unime_assets.training.gradcache import backward_count, full_batch_step, gradcache_step
from unime_assets.training.launch import TrainSpec, launch_command
from unime_assets.training.loop import FAIL_AFTER_STEP_ENV, CheckpointPolicy, InjectedFailure

K = 2


@pytest.fixture(scope="module")
def training_set(settings):
    return small_training_set(settings)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _max_weight_diff(a, b) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# ---------------------------------------------------------------------------------------------
# GradCache


def test_gradcache_gradients_equal_full_batch(tiny_qwen2vl, settings, training_set):
    lm = load_model(tiny_qwen2vl, dtype=torch.float32, train=True, device=torch.device("cpu"))
    examples = embedder_examples(training_set, K)[:4]
    groups = [[e.query for e in examples], [c for e in examples for c in e.candidates]]
    sizes = [len(g) for g in groups]
    images = ImageLoader(settings.train_image_root)
    scores = torch.tensor([e.scores for e in examples])

    def encode(g, start, stop):
        inputs = embed_inputs(groups[g][start:stop], lm.processor, images, lm.image_token)
        return forward_embeddings(lm.model, inputs)

    def loss_fn(reps):
        q, c = reps
        return embedder_loss(q, c.view(len(examples), K + 1, -1), scores, "judge_kl", 0.02)

    results = {}
    for name in ("full", "gradcache"):
        lm.model.zero_grad(set_to_none=True)
        calls = []

        def backward(t, calls=calls):
            calls.append(1)
            t.backward()

        if name == "full":
            loss, _ = full_batch_step(encode, sizes, loss_fn, backward)
        else:
            loss, _ = gradcache_step(encode, sizes, 2, loss_fn, backward)
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        results[name] = (float(loss), grads, len(calls))
    (loss_full, g_full, n_full), (loss_gc, g_gc, n_gc) = results["full"], results["gradcache"]
    assert n_full == 1 and n_gc == backward_count(sizes, 2) == 2 + 6  # 4 queries and 12 candidates by 2
    assert loss_gc == pytest.approx(loss_full, rel=1e-5)
    assert g_gc.keys() == g_full.keys()
    assert any("visual" in n for n in g_full)  # images reach the vision tower
    scale = max(float(g.abs().max()) for g in g_full.values())
    assert scale > 0
    worst = max(float((g_gc[n] - g_full[n]).abs().max()) for n in g_full)
    assert worst <= 1e-4 * scale, (worst, scale)


def test_gradcache_replays_dropout_masks():
    """With dropout, the chunk recomputed with a graph must draw the masks of its no-grad pass."""
    torch.manual_seed(0)
    lin, drop = torch.nn.Linear(6, 5), torch.nn.Dropout(0.5)
    xs = [torch.randn(4, 6), torch.randn(8, 6)]
    target = torch.randn(4, 2)

    def encode(g, start, stop):
        return torch.nn.functional.normalize(drop(lin(xs[g][start:stop])), dim=-1)

    def loss_fn(reps):
        q, c = reps
        return embedder_loss(q, c.view(4, 2, 5), target, "judge_kl", 0.5)

    torch.manual_seed(1)
    lin.zero_grad()
    gradcache_step(encode, [4, 8], 3, loss_fn, lambda t: t.backward())
    got = lin.weight.grad.clone()
    # Reference: the same chunks in the same RNG order, kept in one graph.
    torch.manual_seed(1)
    lin.zero_grad()
    reps = [torch.cat([encode(g, s, min(s + 3, n)) for s in range(0, n, 3)]) for g, n in enumerate([4, 8])]
    loss_fn(reps).backward()
    torch.testing.assert_close(got, lin.weight.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# ranks and resume


def _spec(tmp_path, settings, training_set, name: str, **kw) -> TrainSpec:
    data = tmp_path / "training_set.parquet"
    if not data.exists():
        training_set.write_parquet(data)
    fields = dict(task="embedder", base_path=str(settings.embedder_base.path), training_set=str(data),
                  image_root=str(settings.train_image_root), out_dir=str(tmp_path / name), steps=3,
                  batch_size=4, lr=1e-3, warmup_steps=1, zero_stage=2, k_negatives=K, seed=3)  # fmt: skip
    return TrainSpec(**{**fields, **kw})


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path, settings, training_set):
    """torchrun with 2 gloo ranks (ZeRO-2, GradCache chunk 2, 2 queries per rank) against this process
    as 1 rank (plain backward, 4 queries): same losses, gradient norms and trained weights. The
    gradient norm would differ by the world size if the gathered loss were not rescaled."""
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True}
    spec = _spec(tmp_path, settings, training_set, "two", gradcache_chunk=2, lora=lora)
    spec_path = spec.write(tmp_path / "two.json")
    proc = subprocess.run(launch_command(spec_path, 2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    two = loop.read_result(tmp_path / "two")
    assert two["world_size"] == 2

    cfg = EngineConfig(micro_batch_size=4, total_steps=3, lr=1e-3, warmup_steps=1, zero_stage=2)
    one = train_embedder(spec.base_path, embedder_examples(training_set, K), settings.train_image_root,
                         tmp_path / "one", cfg, seed=3, lora=LoraConfig(**lora))  # fmt: skip
    assert one.world_size == 1
    assert two["losses"] == pytest.approx(one.losses, rel=1e-4)
    assert two["metrics"]["grad_norm"] == pytest.approx(one.metrics["grad_norm"], rel=1e-3)
    assert max(one.losses) > 0 and len(set(one.losses)) == 3
    assert _max_weight_diff(tmp_path / "two", tmp_path / "one") < 1e-5
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()


def test_resume_after_failure_matches_uninterrupted_run(tmp_path, settings, training_set, monkeypatch):
    examples = embedder_examples(training_set, K)
    cfg = EngineConfig(micro_batch_size=4, total_steps=4, lr=1e-3, warmup_steps=1, zero_stage=2)
    policy = CheckpointPolicy(every=2, fingerprint="data-v1")

    def train(name):
        return train_embedder(settings.embedder_base.path, examples, settings.train_image_root,
                              tmp_path / name, cfg, seed=5, gradcache_chunk=4, checkpoint=policy)  # fmt: skip

    full = train("full")
    assert full.resumed_from == 0 and (tmp_path / "full" / "checkpoints" / "complete").exists()

    monkeypatch.setenv(FAIL_AFTER_STEP_ENV, "3")
    with pytest.raises(InjectedFailure):
        train("resumed")
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step00000002"  # step 3 was lost with the failure
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.delenv(FAIL_AFTER_STEP_ENV)

    # Another fingerprint (other data or hyper-parameters) does not resume: it clears the directory.
    other = tmp_path / "other-checkpoints"
    shutil.copytree(ckpts, other)
    assert loop._resume(None, other, "another-fingerprint") == (0, {}) and not list(other.glob("step*"))

    resumed = train("resumed")
    assert resumed.resumed_from == 2
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)  # steps 0-1 restored, 2-3 recomputed
    assert resumed.metrics["lr"] == pytest.approx(full.metrics["lr"])  # the scheduler resumed too
    assert _max_weight_diff(tmp_path / "resumed", tmp_path / "full") < 1e-6
    # A finished run is retrained, not resumed (its checkpoints are marked complete).
    done = tmp_path / "resumed" / "checkpoints"
    fingerprint = json.loads((done / "fingerprint.json").read_text())["fingerprint"]
    assert (done / "complete").exists() and loop._resume(None, done, fingerprint) == (0, {})


def test_a_step_counts_only_once_every_rank_has_written_it(tmp_path, settings, training_set, monkeypatch):
    """`latest` names a step only after the barrier that follows its save: a kill while a rank is
    still writing step 4 resumes from step 2 (DeepSpeed's own `latest` is written before that barrier)."""
    examples = embedder_examples(training_set, K)
    cfg = EngineConfig(micro_batch_size=4, total_steps=6, lr=1e-3, warmup_steps=1, zero_stage=2)
    policy = CheckpointPolicy(every=2, fingerprint="data-v1")
    ckpts = tmp_path / "run" / "checkpoints"

    def train():
        return train_embedder(settings.embedder_base.path, examples, settings.train_image_root,
                              tmp_path / "run", cfg, seed=5, gradcache_chunk=4, checkpoint=policy)  # fmt: skip

    def killed_while_step4_is_written() -> None:
        if (ckpts / "step00000004").is_dir():
            raise InjectedFailure("killed before every rank finished step 4")

    monkeypatch.setattr(loop, "barrier", killed_while_step4_is_written)
    with pytest.raises(InjectedFailure):
        train()
    assert (ckpts / "latest").read_text().strip() == "step00000002"
    monkeypatch.undo()
    assert train().resumed_from == 2


def test_a_base_replaced_at_the_same_path_is_not_resumed_from(tmp_path, settings, training_set, monkeypatch):
    """The resume fingerprint holds the base's content: states trained from the old base are dropped."""
    from safetensors.torch import save_file

    base = tmp_path / "base"
    shutil.copytree(settings.embedder_base.path, base)
    examples = embedder_examples(training_set, K)
    cfg = EngineConfig(micro_batch_size=4, total_steps=4, lr=1e-3, warmup_steps=1, zero_stage=2)
    policy = CheckpointPolicy(every=2, fingerprint="data-v1")

    def train():
        return train_embedder(base, examples, settings.train_image_root, tmp_path / "run", cfg, seed=5,
                              gradcache_chunk=4, checkpoint=policy)  # fmt: skip

    monkeypatch.setenv(FAIL_AFTER_STEP_ENV, "3")
    with pytest.raises(InjectedFailure):
        train()
    monkeypatch.delenv(FAIL_AFTER_STEP_ENV)
    weights = _weights(base)
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3  # another base, same path
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    assert train().resumed_from == 0


def test_rank_balance_guard(monkeypatch):
    model = torch.nn.ModuleDict({"visual": torch.nn.Linear(2, 2), "lm": torch.nn.Linear(2, 2)})
    cfg = EngineConfig(micro_batch_size=1, total_steps=1, zero_stage=2)
    loop.check_rank_balance(model, cfg)  # one process: fine
    monkeypatch.setattr(loop, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="trainable vision-tower parameters"):
        loop.check_rank_balance(model, cfg)
    loop.check_rank_balance(model, EngineConfig(micro_batch_size=1, total_steps=1, zero_stage=0))
    model["visual"].requires_grad_(False)  # LoRA on the language model only
    loop.check_rank_balance(model, cfg)


def test_launch_command_and_spec_round_trip(tmp_path, settings, training_set):
    spec = _spec(tmp_path, settings, training_set, "x", gradcache_chunk=2)
    path = spec.write(tmp_path / "spec.json")
    assert TrainSpec.read(path) == spec
    cmd = launch_command(path, 3)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "3" and cmd[-2:] == ["--spec", str(path)]
    assert "unime_assets.training.launch" in cmd
    ds = launch_command(path, 2, "deepspeed")
    assert ds[ds.index("--num_gpus") + 1] == "2" and "--module" in ds
    with pytest.raises(ValueError, match="processes"):
        launch_command(path, 0)
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads(path.read_text()), "stepz": 1}))
    with pytest.raises(ValueError, match="stepz"):
        TrainSpec.read(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------
# the asset: Pipes launch, MLflow logging, registry


@pytest.mark.slow
def test_embedder_asset_launches_logs_and_registers(tmp_path, settings, embedded_home, training_set):
    import dagster as dg
    from mlflow import MlflowClient

    from unime_assets.defs.assets.training import EMBEDDER_MODEL, embedder_checkpoint
    from unime_assets.defs.io_managers import PolarsParquetIOManager
    from unime_assets.defs.resources import MlflowResource, SettingsResource

    @dg.asset(name="training_set")
    def stub_training_set():
        return training_set

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = (f"artifacts_root: {tmp_path / 'assets'}\n"
                 f"embedder: {{steps: 3, batch_size: 4, k_negatives: {K}}}")  # fmt: skip  # steps 0-1: lr 0
    settings_file = str(embedded_home / "settings.yaml")
    # The embedder starts from `pretrained_base`: the tiny base stands in for it (no pretraining here).
    shutil.copytree(settings.embedder_base.path, tmp_path / "assets" / "pretrained_base")
    resources = {
        "settings": SettingsResource(settings_file=settings_file, overrides_yaml=overrides),
        "mlflow": MlflowResource(tracking_uri=uri, artifact_root=str(tmp_path / "mlartifacts")),
        "io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "tables")),
    }
    (tmp_path / "dg").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dg")) as instance:
        assets = [stub_training_set, embedder_checkpoint]
        result = dg.materialize(assets, resources=resources, instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("embedder_checkpoint")[0].metadata
        messages = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert meta["processes"].value == 1 and meta["steps"].value == 3 and meta["resumed_from_step"].value == 0
    assert any("embedder step 0: loss=" in m for m in messages)  # streamed from rank 0 through Pipes
    assert any("torch.distributed.run" in m for m in messages)

    client = MlflowClient(tracking_uri=uri)
    mv = client.get_model_version_by_alias(EMBEDDER_MODEL, "candidate")
    assert str(mv.version) == meta["model_version"].value
    assert mv.tags["dagster.run_id"] == result.run_id
    assert mv.tags["upstream.training_set.run_id"] == result.run_id  # the stub was materialized in this run
    assert mv.tags["upstream.training_set.storage_id"]
    run_id = meta["mlflow_run_id"].value
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]  # logged by rank 0
    params = client.get_run(run_id).data.params
    assert params["launch.processes"] == "1"
    # The official recipe reaches MLflow and the launched ranks (the spec they read).
    assert float(params["loss_eps"]) == 1e-8 and params["image_resolution"] == "mid" and params["image_size"] == "672"
    assert (params["lr_schedule"], params["total_steps"], params["total_warmup_steps"]) == ("linear", "3", "1")
    assert (params["max_len"], params["weight_decay"], params["grad_clip"]) == ("4096", "0.0", "1.0")
    spec = json.loads((tmp_path / "assets" / "launch" / "embedder_checkpoint" / "spec.json").read_text())
    assert (spec["loss_eps"], spec["image_size"], spec["max_len"]) == (1e-8, 672, 4096)
    assert (spec["lr_schedule"], spec["steps"], spec["warmup_steps"], spec["weight_decay"]) == ("linear", 3, 1, 0.0)
    lrs = sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)
    assert [m.value for m in lrs] == pytest.approx([0.0, 5e-4, 2.5e-4])  # HF linear: step 0 runs at lr 0, then decays

    image = training_set.filter(training_set["pos_image_path"] != "")["pos_image_path"][0]
    code = textwrap.dedent(f"""
        import json, mlflow.pyfunc, pandas as pd
        m = mlflow.pyfunc.load_model("models:/{EMBEDDER_MODEL}@candidate")
        v = m.predict(pd.DataFrame({{"text": ["red", "<|image_1|>\\nRepresent the given image.\\n"],
                                    "image": ["", {image!r}]}}),
                      params={{"image_root": {str(settings.train_image_root)!r}}})
        print(json.dumps({{"shape": list(v.shape), "norms": [float((r ** 2).sum()) for r in v],
                          "cos": float(v[0] @ v[1])}}))
    """)
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, 128]
    assert out["norms"] == pytest.approx([1.0, 1.0], abs=1e-4) and abs(out["cos"]) < 0.9999
