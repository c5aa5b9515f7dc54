"""Out-of-process training: the entry point that `torchrun` / `deepspeed` start on every rank, and
the command line that launches it.

    python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node N \\
        -m unime_assets.training.launch --spec spec.json
    deepspeed --num_gpus N --master_port P --module unime_assets.training.launch --spec spec.json

The spec (a `TrainSpec` as JSON) names the `training_set` parquet, the base checkpoint, the output
directory and every hyper-parameter; the batch size in it is global (queries per micro-step
over all ranks) and each rank takes `batch_size / WORLD_SIZE`, so the same spec gives the same
optimisation on 1 or N processes.

Reporting, rank 0 only:
- per-step metrics (loss, lr, grad_norm, ...) go straight to MLflow, into the run named in the
  spec (`mlflow_tracking_uri`, `mlflow_run_id`; the asset created the run, and with it the sqlite
  schema, before the launch);
- through Dagster Pipes (`open_dagster_pipes`, when launched by `dg.PipesSubprocessClient`): a log
  line every `log_every` steps, and at the end one asset materialization with the summary
  metadata (first/final loss, seconds, world size, resumed-from step). Exceptions reach the
  Dagster run through the Pipes session too. Without Pipes (a plain shell) nothing is reported
  there and the rest works the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

LAUNCH_MODULE = "unime_assets.training.launch"
Launcher = Literal["torchrun", "deepspeed"]
SPEC_KEY_FILE = "train_spec_key.json"  # beside the finished weights: which spec made them


@dataclass
class TrainSpec:
    # "judge": the embedded default's judge bootstrap (Yes/No + answer SFT built from MMEB-train pairs)
    task: Literal["embedder", "reranker", "judge"]
    base_path: str
    training_set: str  # parquet with the `training_set` asset's rows (judge: the MMEB-train pairs)
    image_root: str
    out_dir: str
    steps: int  # resolved optimizer steps (TrainSettings.total_steps)
    batch_size: int  # global: queries per micro-step over all ranks
    lr: float
    warmup_steps: int = 0  # resolved (TrainSettings.total_warmup)
    lr_schedule: str = "linear"
    weight_decay: float = 0.0
    grad_accum: int = 1
    zero_stage: int = 2
    bf16: bool | None = None  # None: bf16 on CUDA, fp32 on CPU
    grad_clip: float = 1.0
    seed: int = 42
    lora: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    # embedder
    k_negatives: int = 8
    loss: str = "judge_kl"
    temperature: float = 0.02
    loss_eps: float = 1e-8
    image_size: int | None = None  # square training images (None: native)
    max_len: int | None = None
    gradcache_chunk: int = 0  # 0: plain full-batch backward
    # reranker
    max_pixels: int | None = None  # None: native images
    label_mask: str = "official"
    pairwise_prompt: str = "official"
    listwise_slot: str = "official"
    # reranker: listwise list lengths (None: the official fixed 6) and listwise examples per query
    list_sizes: tuple[int, int] | None = None
    listwise_per_query: int = 1
    # checkpoints
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    # reporting
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""
    log_every: int = 10
    # the caller's hash of every training input; written beside the finished weights, so a retry of
    # the same spec reuses them (defs/assets/training.py)
    spec_key: str = ""
    trust_remote_code: bool = False  # the base's own code may run (settings: ModelSource.trust_remote_code)
    torch_threads: int = 1  # intra-op threads per rank (Settings.torch_threads; 0: torch's default)

    @property
    def sequences_per_query(self) -> int:
        """Sequences a query brings to a batch: 1 for the embedder; the reranker's two pairwise
        examples and its listwise ones."""
        return 2 + self.listwise_per_query if self.task == "reranker" else 1

    def write(self, path: str | Path) -> Path:
        from unime_assets.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2))
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> TrainSpec:
        raw = json.loads(Path(path).read_text())
        if raw.get("list_sizes") is not None:
            raw["list_sizes"] = tuple(raw["list_sizes"])
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown training spec keys {sorted(unknown)}")
        return cls(**raw)


def spec_from_settings(task: Literal["embedder", "reranker"], s, section, *, base: str | Path,
                       training_set: str | Path, out_dir: str | Path, n_queries: int, **fields: Any) -> TrainSpec:  # fmt: skip
    """The spec of a training as a settings profile (`s`, and its `embedder` or `reranker` `section`)
    describes it, for a training set of `n_queries` queries (an epoch-based length is counted on it);
    `fields` (reporting, trust, a checkpoint policy) override. The one place settings become training
    fields: the training assets and the ablation's in-process runs both use it."""
    own: dict[str, Any] = (
        {"k_negatives": section.k_negatives, "loss": section.loss, "temperature": section.temperature,
         "gradcache_chunk": section.gradcache_chunk, "loss_eps": section.loss_eps,
         "image_size": section.image_size, "max_len": section.max_len} if task == "embedder"
        else {"list_sizes": section.list_sizes, "listwise_per_query": section.listwise_per_query,
              "max_pixels": section.max_pixels, "label_mask": section.label_mask,
              "pairwise_prompt": section.pairwise_prompt, "listwise_slot": section.listwise_slot}
    )  # fmt: skip
    steps = section.total_steps(n_queries)  # `steps`, or `epochs` over the training set (HF's count)
    values = dict(
        task=task, base_path=str(base), training_set=str(training_set), image_root=str(s.train_image_root),
        out_dir=str(out_dir), steps=steps, batch_size=section.batch_size, lr=section.lr,
        warmup_steps=section.total_warmup(steps), lr_schedule=section.lr_schedule,
        weight_decay=section.weight_decay, grad_clip=section.grad_clip,
        grad_accum=section.grad_accum, zero_stage=section.zero_stage,
        bf16=section.bf16, seed=section.seed, lora=section.lora.model_dump(), checkpoint_every=section.checkpoint_every,
        keep_checkpoints=section.keep_checkpoints, log_every=section.log_every, torch_threads=s.torch_threads,
    )  # fmt: skip
    return TrainSpec(**{**values, **own, **fields})


def default_processes() -> int:
    """Every visible GPU, else one CPU process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(spec_path: str | Path, processes: int = 1, launcher: Launcher = "torchrun") -> list[str]:
    """The launcher command line for a spec; the launcher starts `processes` ranks on this node."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    entry = ["--spec", str(spec_path)]
    if launcher == "torchrun":  # `python -m torch.distributed.run` is torchrun, without relying on PATH
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(processes), "-m", LAUNCH_MODULE, *entry]  # fmt: skip
    if launcher == "deepspeed":
        exe = Path(sys.executable).with_name("deepspeed")
        runner = [str(exe)] if exe.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]
        return [*runner, "--num_gpus", str(processes), "--master_port", str(_free_port()),
                "--module", LAUNCH_MODULE, *entry]  # fmt: skip
    raise ValueError(f"unknown launcher {launcher!r}; expected 'torchrun' or 'deepspeed'")


def launch_env(torch_threads: int = 1) -> dict[str, str]:
    """Environment additions for the ranks: unbuffered output (logs interleave readably), no
    tokenizer thread pools fighting the ranks for cores, and the configured intra-op thread count
    (OpenMP / MKL read it at start; `run_spec` also sets torch's)."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if torch_threads > 0:
        env |= {"OMP_NUM_THREADS": str(torch_threads), "MKL_NUM_THREADS": str(torch_threads)}
    return env


# ---------------------------------------------------------------------------------------------
# the entry point


class _NoPipes:
    """Stands in for the Pipes context when the process was not launched by Dagster (log lines go to
    stdout), or on ranks > 0 (silent)."""

    class _Log:
        def __init__(self, echo: bool) -> None:
            self.echo = echo

        def info(self, msg: str) -> None:
            if self.echo:
                print(msg, flush=True)

        warning = info

    def __init__(self, echo: bool = True) -> None:
        self.log = self._Log(echo)

    def report_asset_materialization(self, **_: Any) -> None:
        pass


@contextlib.contextmanager
def _pipes(rank: int) -> Iterator[Any]:
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if rank != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield _NoPipes(echo=rank == 0)
        return
    with open_dagster_pipes() as pipes:
        yield pipes


def data_hash(df) -> str:
    """Content hash of the training rows (order included): a resumed run must train on the same data."""
    from unime_assets.fingerprints import hash_fields

    return hash_fields("training-data", df.hash_rows(seed=0).to_numpy().tobytes())[:16]


def _step_logger(spec: TrainSpec, pipes):
    client = None
    if spec.mlflow_run_id:  # imported on rank 0 only, and only when there is a run to log to
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri or None)

    def log(step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v == v}  # drop NaN
        if client is not None:
            now = int(time.time() * 1000)
            client.log_batch(spec.mlflow_run_id, metrics=[Metric(k, v, now, step) for k, v in clean.items()])
        if step % spec.log_every == 0 or step == spec.steps - 1:
            pipes.log.info(f"{spec.task} step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in clean.items()))

    return log


def run_spec(spec: TrainSpec, pipes=None):
    """Train what the spec says as this rank of the current launch; returns the TrainResult."""
    import polars as pl

    from unime_assets.config import LoraConfig
    from unime_assets.models.encoding import ItemError
    from unime_assets.models.loading import set_torch_threads, trust_remote_code_for
    from unime_assets.training.engine import EngineConfig, ensure_distributed, world_size
    from unime_assets.training.loop import CheckpointPolicy

    trust_remote_code_for([spec.base_path, spec.out_dir] if spec.trust_remote_code else [])
    set_torch_threads(spec.torch_threads)
    ensure_distributed()
    world = world_size()
    per_query = spec.sequences_per_query
    if spec.batch_size * per_query % world:
        raise ValueError(f"batch_size {spec.batch_size} (x{per_query} sequences) is not divisible by "
                         f"the {world} processes")  # fmt: skip
    pipes = _NoPipes() if pipes is None else pipes
    ts = pl.read_parquet(spec.training_set)
    cfg = EngineConfig(micro_batch_size=spec.batch_size * per_query // world, total_steps=spec.steps,
                       lr=spec.lr, warmup_steps=spec.warmup_steps, grad_accum=spec.grad_accum,
                       zero_stage=spec.zero_stage, grad_clip=spec.grad_clip, bf16=spec.bf16,
                       lr_schedule=spec.lr_schedule, weight_decay=spec.weight_decay)  # fmt: skip
    policy = CheckpointPolicy(every=spec.checkpoint_every, keep=spec.keep_checkpoints,
                              fingerprint=data_hash(ts))  # fmt: skip
    lora = LoraConfig(**spec.lora)
    log = _step_logger(spec, pipes)
    pipes.log.info(f"{spec.task}: {ts.height} queries, {world} process(es), global batch {spec.batch_size}, "
                   f"ZeRO-{spec.zero_stage}, {spec.steps} steps ({spec.lr_schedule}, {spec.warmup_steps} warmup)")  # fmt: skip
    try:
        return _train(spec, ts, cfg, lora, log, policy)
    except ItemError as e:  # name the training_set rows that hold the item
        raise ValueError(f"training_set ({spec.training_set}): {_rows_with(ts, e.image)}: {e}") from e


def _rows_with(ts, image: str) -> str:
    import polars as pl

    shown = (pl.col("qry_image_path") == image) | (pl.col("pos_image_path") == image)
    if "neg_image_paths" in ts.columns:  # a training_set (the judge bootstrap reads MMEB-train pairs)
        shown = shown | pl.col("neg_image_paths").list.contains(image)
    hit = ts.filter(shown) if image else ts.clear()
    return f"{hit.height} row(s) show image {image!r} (pair_id {hit['pair_id'].head(5).to_list()})"


def _train(spec: TrainSpec, ts, cfg, lora, log, policy):
    from unime_assets.training.data import embedder_examples, judge_bootstrap_examples, reranker_sft_examples
    from unime_assets.training.embedder import train_embedder
    from unime_assets.training.sft import train_sft

    if spec.task == "embedder":
        examples = embedder_examples(ts, spec.k_negatives)
        return train_embedder(spec.base_path, examples, spec.image_root, spec.out_dir, cfg, mode=spec.loss,
                              temperature=spec.temperature, lora=lora, seed=spec.seed, log=log,
                              gradcache_chunk=spec.gradcache_chunk, checkpoint=policy, loss_eps=spec.loss_eps,
                              image_size=spec.image_size, max_len=spec.max_len)  # fmt: skip
    if spec.task == "reranker":
        examples = reranker_sft_examples(ts, seed=spec.seed, slot_draw=spec.listwise_slot,
                                         pairwise_prompt=spec.pairwise_prompt, list_sizes=spec.list_sizes,
                                         listwise_per_query=spec.listwise_per_query)  # fmt: skip
        return train_sft(spec.base_path, examples, spec.image_root, spec.out_dir, cfg, role="reranker",
                         lora=lora, seed=spec.seed, log=log, checkpoint=policy, label_mask=spec.label_mask,
                         max_pixels=spec.max_pixels)  # fmt: skip
    if spec.task == "judge":  # the stand-in judge keeps its own recipe (answer + <|im_end|>, native images)
        return train_sft(spec.base_path, judge_bootstrap_examples(ts, seed=spec.seed), spec.image_root, spec.out_dir,
                         cfg, role="judge", seed=spec.seed, log=log, checkpoint=policy,
                         label_mask=spec.label_mask)  # fmt: skip
    raise ValueError(f"unknown training task {spec.task!r}")


def write_spec_key(out_dir: str | Path, key: str) -> None:
    from unime_assets.io import atomic_path

    with atomic_path(Path(out_dir) / SPEC_KEY_FILE) as tmp:
        tmp.write_text(json.dumps({"spec_key": key}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=LAUNCH_MODULE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="training spec JSON (TrainSpec)")
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment is what is used.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from unime_assets.quiet import install

    install()  # each rank imports DeepSpeed again: the same understood messages, dropped the same way
    spec = TrainSpec.read(args.spec)
    rank = int(os.environ.get("RANK", "0"))
    with _pipes(rank) as pipes:
        result = run_spec(spec, pipes)
        if rank == 0:
            meta = {"first_loss": result.losses[0], "final_loss": result.losses[-1],
                    "steps": len(result.losses), "train_seconds": round(result.seconds, 1),
                    "processes": result.world_size, "resumed_from_step": result.resumed_from}  # fmt: skip
            pipes.report_asset_materialization(metadata=meta)
            if spec.spec_key:  # after the weights are in place: the key marks them finished
                write_spec_key(spec.out_dir, spec.spec_key)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
