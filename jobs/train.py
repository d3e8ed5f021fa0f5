"""`mqt train`: two-stage Matryoshka training of the query transformer.

The describe and alignment stages, then stage 1 at m = M and stage 2 with m drawn per step
(mqt.train.fit). `backend=local` trains in this process; `backend=ddp` and
`backend=deepspeed` run the same loop on `scaling.workers` Ray Train workers
(pipeline.train.ray_train). Running the same command again resumes from the last
checkpoint. The trained parts are exported as a checkpoint folder (`<output>/model`) that
`mqt generate checkpoint=...` and the other jobs load. Guide: docs/training.md.
"""

from __future__ import annotations

from pathlib import Path

from mqt.configtree import save_config
from mqt.train.config import validate_train
from mqt.train.fit import LocalSession, fit
from pipeline.connect import check_cluster
from pipeline.train.config import TrainConfig, validate_cluster
from pipeline.train.data import manifest_examples, manifest_loader
from pipeline.train.ray_train import run

Config = TrainConfig  # mqt.train.config.TrainArgs plus Ray Train's workers and storage


def validate(cfg: Config) -> None:
    validate_train(cfg)
    validate_cluster(cfg)
    if cfg.backend != "local":
        check_cluster(cfg.address)
    if cfg.data.manifest:  # a bad manifest or row fails here, before any model work
        manifest_examples(cfg.data.manifest, cfg.storage)


def main(cfg: Config) -> dict:
    if cfg.backend != "local":
        return run(cfg)
    out = Path(cfg.output)
    save_config(cfg, out)
    return fit(cfg, LocalSession(out), manifest_loader(cfg.data.manifest, cfg.storage))
