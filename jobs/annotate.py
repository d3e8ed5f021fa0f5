"""`mqt annotate`: caption, answer or choose for every image of a folder or manifest on Ray Data.

    mqt annotate source=IMAGES/ task=caption output=runs/annotate policy.m.caption=4
    mqt annotate source=s3://bucket/rows.jsonl output=s3://bucket/out storage.endpoint_url=...
    mqt annotate source=rows.jsonl output=runs/q quota.flops=2e13 quota.pacing=true

The job is pipeline/annotate.py (sources -> decode -> engine -> Parquet parts, resumable;
with a quota, planned and charged through pipeline.scheduler). The config is checked, and a
quota job planned, once, before Ray starts or any model loads. Schema and limits:
docs/annotate.md.
"""

from __future__ import annotations

from pipeline.annotate import AnnotateConfig, Prepared, annotate, check

Config = AnnotateConfig

def validate(cfg: Config) -> Prepared:
    return check(cfg)


def main(cfg: Config, prepared: Prepared | None = None) -> dict:
    return annotate(cfg, prepared)
