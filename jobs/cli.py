"""The `mqt` command: one subcommand per job.

    mqt <job> [--config FILE.yaml] [--preset NAME] [key=value ...] [--print-config]

Each job module exposes a `Config` dataclass and `main(cfg)`. The config is the job's
defaults, then the YAML file, then the overrides; a bad key or value fails here, naming
the field, before any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import yaml

from mqt.configtree import ConfigError, load_yaml, merge, parse_overrides, to_dict

JOBS = {
    "demo": ("jobs.demo", "the main job on the embedded default"),
    "generate": ("jobs.generate", "images + question + m -> answers"),
    "cost": ("jobs.cost", "FLOPs per number of visual tokens for a preset"),
    "eval": ("jobs.evaluate", "accuracy per task at many m, the oracle, calibration data"),
    "train": ("jobs.train", "two-stage Matryoshka training of the query transformer"),
    "bench-annotate": ("jobs.bench_annotate", "images/s of the annotate job vs a plain loop; RSS"),
    "annotate": ("jobs.annotate", "captions / answers for an image folder or manifest (Ray Data)"),
    "plan": ("jobs.plan", "per-task visual-token budgets that fit a compute quota"),
    "profile": ("jobs.profile", "seconds per row at each m here: a time model for quotas"),
    "bench-scheduler": ("jobs.bench_scheduler", "accuracy vs spend of the scheduler policies"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqt", description="Matryoshka Query Transformer jobs")
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, (_, help_) in JOBS.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", help="YAML file with the job config")
        s.add_argument("--preset", help="shorthand for preset=NAME")
        s.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit")
        s.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def resolve(job: str, config_file: str | None, overrides: list[str], preset: str | None,
            check: bool = True):
    """(module, resolved config) for a job; raises ConfigError naming the bad field.

    Types and field names are always checked; `check` adds the job's own validation
    (files exist, values in range)."""
    module = importlib.import_module(JOBS[job][0])
    data = load_yaml(config_file) if config_file else {}
    extra = parse_overrides(overrides)
    if preset:
        extra["preset"] = preset
    cfg = merge(merge(module.Config(), data), extra)
    if check and hasattr(module, "validate"):
        module.validate(cfg)
    return module, cfg


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        module, cfg = resolve(args.job, args.config, args.overrides, args.preset,
                              check=not args.print_config)
    except (ConfigError, ValueError) as e:
        print(f"mqt {args.job}: bad config: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    result = module.main(cfg)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
