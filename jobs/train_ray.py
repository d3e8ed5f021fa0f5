"""`mqt train backend=ddp`: the training loop of jobs.train inside a Ray Train TorchTrainer.

The driver (`run`) starts `scaling.workers` workers; each runs `jobs.train.fit`, the same
function the single-process `mqt train` runs, with a `RaySession`: its rank from the Train
context, DistributedDataParallel over the trainable parameters (gloo on CPU, NCCL on GPU,
chosen by Ray), checkpoints through `ray.train.report` into `<storage_path>/<name>`.
Running the same `name` again resumes from that run's last checkpoint; with
`scaling.max_failures > 0` a failed worker is replaced and all ranks restart from it.
The last checkpoint is exported to `<output>/model` (mqt.checkpoint's folder).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
import ray.train.torch

from jobs.common import log, save_config
from jobs.train import Config, fit, load_state, write_state
from jobs.trainloop import Ranks
from mqt.checkpoint import PARTS


def run(cfg: Config) -> dict:
    """Train on Ray (RAY_ADDRESS picks a cluster; without it a local Ray is started)."""
    cfg = on_shared_paths(cfg)
    save_config(cfg, cfg.output)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)  # a local Ray; RAY_ADDRESS connects to a cluster
    result = trainer(cfg).fit()
    with result.checkpoint.as_directory() as folder:
        export_model(Path(folder), Path(cfg.output) / "model")
    log(f"checkpoint {result.checkpoint.path}; model in {Path(cfg.output) / 'model'}")
    return {"eval": {k: v for k, v in result.metrics.items() if k.startswith("acc@")},
            "last": result.metrics, "checkpoint": result.checkpoint.path}


def on_shared_paths(cfg: Config) -> Config:
    """Absolute paths and the defaults of name and storage_path: workers do not share the
    driver's working directory."""
    out = Path(cfg.output).resolve()
    return dataclasses.replace(
        cfg, output=str(out), name=cfg.name or out.name,
        storage_path=str(Path(cfg.storage_path).resolve()) if cfg.storage_path
        else str(out / "ray"),
        feature_cache=str(Path(cfg.feature_cache).resolve()) if cfg.feature_cache else "")


def trainer(cfg: Config) -> ray.train.torch.TorchTrainer:
    s = cfg.scaling
    scaling = ray.train.ScalingConfig(num_workers=s.workers, use_gpu=s.use_gpu,
                                      resources_per_worker={"CPU": s.cpus_per_worker})
    run_config = ray.train.RunConfig(
        name=cfg.name, storage_path=cfg.storage_path,
        failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    return ray.train.torch.TorchTrainer(worker, train_loop_config={"cfg": cfg},
                                        scaling_config=scaling, run_config=run_config)


def worker(config: dict) -> None:
    """One Ray Train worker process."""
    fit(config["cfg"], RaySession(Path(config["cfg"].output)))


class RaySession:
    """A rank of a Ray Train run: checkpoints are Ray checkpoints, every rank reports."""

    def __init__(self, out: Path):
        ctx = ray.train.get_context()
        self.out = out
        self.ranks = Ranks(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(),
                           ray.train.torch.get_device())

    def restore(self, model, opt) -> int:
        """The run's latest checkpoint (a resumed name, or a restart after a failure)."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as folder:
            step = load_state(Path(folder), model, opt, self.ranks)
        if self.ranks.main:
            log(f"resuming from step {step} ({checkpoint.path})")
        return step

    def checkpoint_due(self, step: int, total: int, every: int) -> bool:
        return bool(every) and step % every == 0 and step < total  # `finish` saves the last

    def save(self, model, opt, step: int, metrics: dict) -> None:
        """Every rank reports (a barrier); Ray merges the ranks' folders into one:
        rank 0's model, optimizer and step, and each rank's RNG state."""
        with tempfile.TemporaryDirectory() as folder:
            write_state(Path(folder), model, opt, step, self.ranks)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{step:06d}")

    def finish(self, model, opt, step: int, metrics: dict, trained: bool) -> None:
        """The last checkpoint carries the final evaluation (rank 0's metrics); a run
        resumed with nothing left to train keeps its earlier last checkpoint."""
        if trained:
            self.save(model, opt, step, metrics)


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
