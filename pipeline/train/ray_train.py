"""`mqt train backend=ddp|deepspeed`: the training loop of mqt.train in a Ray Train TorchTrainer.

The driver (`run`) starts `scaling.workers` workers; each runs `mqt.train.fit.fit`, the same
function the single-process `mqt train` runs, with a `RaySession`: its rank from the Train
context, the process group Ray made (gloo on CPU, NCCL on GPU) under DistributedDataParallel
or DeepSpeed ZeRO (mqt.train.deepspeed), checkpoints through `ray.train.report` into
`<storage_path>/<name>`, a folder or `s3://bucket/prefix` (a pyarrow filesystem from
`storage`). Running the same `name` again resumes from that run's last checkpoint; with
`scaling.max_failures > 0` a failed worker is replaced and all ranks restart from it.
The last checkpoint is exported to `<output>/model` (mqt.checkpoint's folder) on the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from hashlib import sha1
from pathlib import Path

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch.distributed as dist

from mqt.checkpoint import PARTS
from mqt.configtree import save_yaml
from mqt.train.fit import fit
from mqt.train.state import load_state, saved_step, write_state
from mqt.train.steps import Ranks, log
from pipeline.connect import connect
from pipeline.storage import locate, scheme_of
from pipeline.train.config import TrainConfig
from pipeline.train.data import manifest_loader

REPORTS = "reports.jsonl"  # ReportLog's file in the output folder


def run(cfg: TrainConfig) -> dict:
    """Train on Ray (RAY_ADDRESS picks a cluster; without it a local Ray is started). The
    resolved config (absolute paths, the run's name) goes to <output>/config.yaml."""
    cfg = on_shared_paths(cfg)
    save_yaml(cfg, Path(cfg.output) / "config.yaml")
    connect(cfg.address, include_dashboard=False)  # or the cluster of address=, RAY_ADDRESS
    result = trainer(cfg).fit()
    with result.checkpoint.as_directory() as folder:  # downloaded first if on s3://
        export_model(Path(folder), Path(cfg.output) / "model")
    where = checkpoint_uri(cfg, result.checkpoint.path)
    log(f"checkpoint {where}; model in {Path(cfg.output) / 'model'}")
    return {"eval": {k: v for k, v in result.metrics.items() if k.startswith("acc@")},
            "last": result.metrics, "checkpoint": where}


def checkpoint_uri(cfg: TrainConfig, path: str) -> str:
    """A checkpoint's path as the user writes it: s3://bucket/... for s3 storage."""
    return f"s3://{path}" if scheme_of(cfg.storage_path) == "s3" else path


def on_shared_paths(cfg: TrainConfig) -> TrainConfig:
    """Absolute paths and the defaults of name and storage_path: workers do not share the
    driver's working directory."""
    out = Path(cfg.output).resolve()
    return dataclasses.replace(
        cfg, output=str(out), name=cfg.name or out.name,
        storage_path=shared_storage(cfg.storage_path, out),
        feature_cache=str(Path(cfg.feature_cache).resolve()) if cfg.feature_cache else "")


def shared_storage(path: str, out: Path) -> str:
    """s3://bucket/prefix as given; a folder (or file://) as an absolute path."""
    if scheme_of(path) == "s3":
        return path.rstrip("/")
    return locate(path).path if path else str(out / "ray")


def trainer(cfg: TrainConfig) -> ray.train.torch.TorchTrainer:
    s = cfg.scaling
    scaling = ray.train.ScalingConfig(num_workers=s.workers, use_gpu=s.use_gpu,
                                      resources_per_worker={"CPU": s.cpus_per_worker})
    where = locate(cfg.storage_path, cfg.storage)  # s3://: pyarrow's S3FileSystem, endpoint_url
    run_config = ray.train.RunConfig(
        name=cfg.name, storage_path=where.path if where.ray_filesystem else cfg.storage_path,
        storage_filesystem=where.ray_filesystem,
        failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        callbacks=[ReportLog(str(Path(cfg.output) / REPORTS))])
    return ray.train.torch.TorchTrainer(worker, train_loop_config={"cfg": cfg},
                                        scaling_config=scaling, run_config=run_config)


class ReportLog(ray.train.UserCallback):
    """Runs in the Ray Train controller: each `ray.train.report` of the workers (every
    `report_every` steps and every checkpoint) as a line of `<output>/reports.jsonl` with
    rank 0's metrics, how many ranks (and Ray nodes) reported, and the checkpoint's path
    if there is one.
    All ranks must have reported the same step; a report where they did not is marked."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        first = dict(metrics[0]) if metrics else {}
        first.pop("rank", None)
        first.pop("node", None)
        line = {"time": round(time.time(), 3), **first, "ranks": len(metrics),
                "nodes": len({m.get("node") for m in metrics}),
                "checkpoint": checkpoint.path if checkpoint is not None else None}
        steps = {m.get("step") for m in metrics}
        if len(steps) > 1:
            line["ranks_disagree"] = sorted(steps, key=str)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def read_reports(output: str | Path) -> list[dict]:
    """The lines ReportLog wrote for a run's output folder."""
    path = Path(output) / REPORTS
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def node_copy(checkpoint: ray.train.Checkpoint, ranks: Ranks) -> Iterator[Path]:
    """A checkpoint's folder that every rank of a node reads. A local checkpoint is read
    in place. A remote one (s3://) is downloaded by the node's local rank 0 into a folder
    named for the checkpoint, the job and the node; all ranks wait for it, read it, and
    wait again before rank 0 removes it. (Checkpoint.as_directory shares one temp folder
    among the ranks without a barrier: a rank that finishes early deletes it while a
    slower one is still arriving, which fails that rank's restore.)"""
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    context = ray.get_runtime_context()
    key = f"{checkpoint.path}|{context.get_job_id()}|{context.get_node_id()}"
    folder = Path(tempfile.gettempdir()) / f"mqt-restore-{sha1(key.encode()).hexdigest()[:16]}"

    def barrier() -> None:
        if ranks.world > 1:
            dist.barrier()

    if ranks.local_rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        checkpoint.to_directory(str(folder))
    barrier()
    try:
        yield folder
    finally:
        barrier()
        if ranks.local_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def worker(config: dict) -> None:
    """One Ray Train worker process."""
    cfg = config["cfg"]
    fit(cfg, RaySession(Path(cfg.output)), manifest_loader(cfg.data.manifest, cfg.storage))


class RaySession:
    """A rank of a Ray Train run: checkpoints are Ray checkpoints, every rank reports."""

    def __init__(self, out: Path):
        ctx = ray.train.get_context()
        self.out = out
        self.node = ray.get_runtime_context().get_node_id()
        self.ranks = Ranks(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(),
                           ray.train.torch.get_device())

    def resuming(self) -> bool:
        return ray.train.get_checkpoint() is not None

    def checkpoint_step(self) -> int:
        checkpoint = ray.train.get_checkpoint()  # its state.pt only, not a whole download
        return saved_step(checkpoint.path, checkpoint.filesystem) if checkpoint else 0

    def restore(self, training) -> int:
        """The run's latest checkpoint (a resumed name, or a restart after a failure)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with node_copy(checkpoint, self.ranks) as folder:  # on s3://: once per node
            step = load_state(folder, training, self.ranks)
        if self.ranks.main:
            log(f"resuming from step {step} ({checkpoint.path})")
        return step

    def checkpoint_due(self, step: int, total: int, every: int) -> bool:
        return bool(every) and step % every == 0 and step < total  # `finish` saves the last

    def save(self, training, step: int, metrics: dict) -> None:
        """Every rank reports (a barrier); Ray merges the ranks' folders into one:
        rank 0's model, optimizer and step (DeepSpeed: each rank's optimizer shard), and
        each rank's RNG state."""
        with tempfile.TemporaryDirectory() as folder:
            write_state(Path(folder), training, step, self.ranks)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(self.tagged(metrics), checkpoint=checkpoint,
                             checkpoint_dir_name=f"checkpoint_{step:06d}")

    def report(self, step: int, every: int, metrics: dict) -> None:
        """Every `every` steps (not at checkpoints: those report with their checkpoint),
        every rank reports its row without a checkpoint (a barrier on all ranks)."""
        if every and step % every == 0:
            ray.train.report(self.tagged(metrics))

    def tagged(self, metrics: dict) -> dict:
        """A report's metrics with the rank and the Ray node that sent them."""
        return {**metrics, "rank": self.ranks.rank, "node": self.node}

    def finish(self, training, step: int, metrics: dict, trained: bool) -> None:
        """The last checkpoint carries the final evaluation (rank 0's metrics); a run
        resumed with nothing left to train keeps its earlier last checkpoint."""
        if trained:
            self.save(training, step, metrics)


def export_model(folder: Path, dest: Path) -> Path:
    """The model files of a training checkpoint (no optimizer, no RNG) as a model folder."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(folder / "config.yaml", dest)
    for part in PARTS:
        if (folder / f"{part}.safetensors").exists():
            shutil.copy2(folder / f"{part}.safetensors", dest)
    if (folder / "tokenizer").is_dir():
        shutil.copytree(folder / "tokenizer", dest / "tokenizer")
    return dest
