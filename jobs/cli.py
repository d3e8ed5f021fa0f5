"""The `mqt` command: one subcommand per job.

    mqt <job> [--config FILE.yaml] [--preset NAME] [key=value ...] [--print-config] [--verbose]
    mqt submit [--address URL] <job> ...      mqt jobs list | status ID | logs ID | stop ID

Each job module exposes a `Config` dataclass, `validate(cfg)` and `main(cfg)`. The config
is the job's defaults, then the YAML file, then the overrides; a bad key or value fails
here, naming the field, before any work starts. What `validate` returns besides None (a
quota job's plan) is handed to `main(cfg, prepared)`, so nothing is planned twice.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import yaml

from mqt.configtree import ConfigError, load_yaml, merge, parse_overrides, to_dict
from pipeline.quiet import VERBOSE_ENV, drop_native_logs

JOBS = {
    "demo": ("jobs.demo", "the main job on the embedded default"),
    "generate": ("jobs.generate", "images + question + m -> answers"),
    "cost": ("jobs.cost", "FLOPs per number of visual tokens for a preset"),
    "eval": ("jobs.evaluate", "accuracy per task at many m, the oracle, calibration data"),
    "train": ("jobs.train", "two-stage Matryoshka training of the query transformer"),
    "annotate": ("jobs.annotate", "captions / answers for an image folder or manifest (Ray Data)"),
    "plan": ("jobs.plan", "per-task visual-token budgets that fit a compute quota"),
    "profile": ("jobs.profile", "seconds per row at each m here: a time model for quotas"),
    "serve": ("jobs.serve", "an OpenAI-compatible endpoint on Ray Serve (m per request)"),
    "export": ("jobs.export", "a model's LoRA adapters in the PEFT layout"),
}
# commands with their own arguments: (module, function of argv, help)
COMMANDS = {
    "submit": ("jobs.submit", "submit", "run an mqt job on a Ray cluster (the Ray Jobs API)"),
    "jobs": ("jobs.submit", "manage", "list, follow or stop the cluster's jobs"),
}


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with the job config")
    p.add_argument("--preset", help="shorthand for preset=NAME")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own logs too (its C++ notices, its INFO lines)")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqt", description="Matryoshka Query Transformer jobs")
    sub = p.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, (_, help_) in JOBS.items():
        add_job_arguments(sub.add_parser(name, help=help_, description=help_))
    for name, (*_, help_) in COMMANDS.items():  # listed in the help; main hands them argv
        sub.add_parser(name, help=help_)
    return p


def configure(module, config_file: str | None, overrides: list[str], preset: str | None):
    """A job module's config: its defaults, then the YAML file, then the overrides; types
    and field names checked (ConfigError names the bad field)."""
    data = load_yaml(config_file) if config_file else {}
    extra = parse_overrides(overrides)
    if preset:
        extra["preset"] = preset
    return merge(merge(module.Config(), data), extra)


def load(job: str, config_file: str | None, overrides: list[str], preset: str | None):
    """(module, config) of an `mqt` job."""
    module = importlib.import_module(JOBS[job][0])
    return module, configure(module, config_file, overrides, preset)


def resolve(job: str, config_file: str | None, overrides: list[str], preset: str | None,
            check: bool = True):
    """(module, resolved config) for a job; raises ConfigError naming the bad field.

    Types and field names are always checked; `check` adds the job's own validation
    (files exist, values in range)."""
    module, cfg = load(job, config_file, overrides, preset)
    if check:
        module.validate(cfg)
    return module, cfg


def execute(module, name: str, args: argparse.Namespace) -> int:
    """Configure, validate and run a job module from parsed arguments: exit status 2 with
    the bad field named before any work, 0 when its `main` returns (or its int)."""
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # pipeline.connect and the filter read it
    try:
        cfg = configure(module, args.config, args.overrides, args.preset)
        # what a job's validation prepares (a quota job's plan) its main reuses
        prepared = None if args.print_config else module.validate(cfg)
    except (ConfigError, ValueError) as e:
        print(f"{name}: bad config: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    result = module.main(cfg) if prepared is None else module.main(cfg, prepared)
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module, function, _ = COMMANDS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = parser().parse_args(argv)
    return execute(importlib.import_module(JOBS[args.job][0]), f"mqt {args.job}", args)


def run_module(module, prog: str, argv: list[str] | None = None) -> int:
    """A module with `Config`, `validate` and `main` run as its own command (the benchmarks:
    `python -m bench.NAME [key=value ...]`), with the same options as an `mqt` job."""
    p = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").split("\n")[0])
    add_job_arguments(p)
    return execute(module, prog, p.parse_args(argv))


def entry() -> int:
    """The `mqt` command: `main` with Ray's C++ log lines kept off the terminal (they stay in
    Ray's log files; pipeline/quiet.py) unless `--verbose`."""
    if "--verbose" not in sys.argv[1:]:
        drop_native_logs()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
