"""The config of `mqt train`: mqt.train's `TrainArgs` plus what Ray Train adds.

`ScalingArgs` (the workers), `storage_path` and `storage` (where Ray Train keeps the run's
checkpoints: a folder every worker sees, or s3://) and `name` (the run; the same name
resumes it). `validate_cluster` checks them; mqt.train.config.validate_train the rest.
No Ray import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mqt.configtree import ConfigError
from mqt.train.config import TrainArgs
from pipeline.storage import StorageArgs, scheme_of


@dataclass
class ScalingArgs:
    """Ray Train workers (backend ddp): one training process per worker."""

    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 0  # worker failures survived, each by a restart from the last checkpoint


@dataclass
class TrainConfig(TrainArgs):
    """`mqt train`'s whole config: the loop's fields (TrainArgs), then Ray Train's."""

    scaling: ScalingArgs = field(default_factory=ScalingArgs)
    # Ray Train checkpoints: a folder all workers see, or s3://bucket/prefix; "" = <output>/ray
    storage_path: str = ""
    storage: StorageArgs = field(default_factory=StorageArgs)  # how to reach s3:// storage
    name: str = ""  # the Ray Train run; the same name resumes it; "" = the output folder's name
    # the Ray cluster (host:port of its GCS, ray://..., auto); "" = RAY_ADDRESS, else a local Ray
    address: str = ""


def validate_cluster(cfg: TrainConfig) -> None:
    """Where checkpoints go, and a global batch the workers split evenly."""
    if scheme_of(cfg.storage_path) not in ("", "file", "s3"):
        raise ConfigError(f"storage_path={cfg.storage_path!r}: a folder every worker sees "
                          "(local or mounted) or s3://bucket/prefix")
    w = cfg.scaling.workers
    if cfg.backend != "local" and (w < 1 or cfg.batch_size % w):
        raise ConfigError(f"batch_size={cfg.batch_size} (the global batch) must be a multiple "
                          f"of scaling.workers={w}")
