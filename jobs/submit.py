"""`mqt submit` and `mqt jobs`: run `mqt` jobs on a Ray cluster through the Ray Jobs API.

    mqt submit [--address URL] [--no-wait] [--working-dir DIR | --no-working-dir]
               [--submission-id ID] [--env KEY=VALUE ...] JOB [--config F] [--preset P]
               [key=value ...]
    mqt jobs [--address URL] list | status ID | logs ID [--follow] | stop ID

The address is `--address`, else `RAY_ADDRESS`, as `ray job submit` takes it: the
cluster's dashboard, http://HOST:8265. It must answer within 20 s, or the command fails
naming it. The job's config is resolved and validated here first (`mqt JOB
--print-config` resolves the same way): a bad key or value exits 2 before anything is sent
(`--no-check` keeps only the check of names and types, for a source only the cluster can
read). The job runs as `mqt JOB ...` with the same arguments; `--config F` must lie inside
the working directory, which is uploaded (the project folder by default, without `.venv`,
`runs/`, `.git` and caches; `--no-working-dir` for an image that already holds the
project). `mqt submit` follows the job's logs and exits 0 only when it SUCCEEDED, else 1
with its status and message; Ctrl-C stops following and leaves the job running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

from jobs.cli import JOBS, add_job_arguments, resolve
from mqt.configtree import ConfigError
from pipeline.connect import ClusterUnreachable, check_reachable

# uploaded with the working directory: never these (Ray also skips what .gitignore lists)
EXCLUDES = [".venv", "runs", ".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
            ".mypy_cache", "*.egg-info"]
NOT_SUBMITTED = ("submit", "jobs")  # commands of this module, not jobs
DONE = ("SUCCEEDED", "FAILED", "STOPPED")


def address_of(flag: str | None) -> str:
    """The Jobs API address: the flag, else RAY_ADDRESS (an error names both if neither)."""
    address = flag or os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        raise ValueError("no cluster: give --address http://HOST:8265 (the dashboard) or set "
                         "RAY_ADDRESS")
    return address if "://" in address else f"http://{address}"


def client(address: str, timeout_s: float = 20.0):
    """A JobSubmissionClient for `address`, after checking something answers there. With a
    Ray token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and
    RAY_AUTH_MODE unset, requests carry it, as `ray start` and `ray.init` turn token
    authentication on in that case."""
    check_reachable(address, "--address/RAY_ADDRESS", timeout_s)
    from ray._private.authentication.authentication_token_setup import (  # heavy: Ray
        maybe_enable_token_auth_if_token_available,
    )
    from ray.exceptions import AuthenticationError  # heavy: Ray
    from ray.job_submission import JobSubmissionClient  # heavy: Ray

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise ValueError(f"{address}: the cluster asks for its token: set RAY_AUTH_TOKEN or "
                         f"RAY_AUTH_TOKEN_PATH ({str(e).splitlines()[0]})") from None


def job_parser(job: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mqt submit {job}", add_help=False)
    add_job_arguments(p)
    return p


def check_job(job: str, argv: list[str], validate: bool = True):
    """The job's arguments resolved (and validated) as `mqt JOB` would; returns the parsed
    arguments. Raises ConfigError/ValueError naming the bad field."""
    if job not in JOBS:
        raise ValueError(f"{job!r} is not an mqt job ({', '.join(JOBS)})")
    args = job_parser(job).parse_args(argv)
    if args.print_config:
        raise ValueError("--print-config: run `mqt JOB --print-config` here instead")
    resolve(job, args.config, args.overrides, args.preset, check=validate)
    return args


def entrypoint(job: str, argv: list[str], working_dir: Path | None, args) -> str:
    """`mqt JOB ...` as the cluster runs it (a --config file by its path in the working
    directory)."""
    argv = list(argv)
    if args.config:
        path = Path(args.config).resolve()
        if working_dir is None or not path.is_relative_to(working_dir.resolve()):
            raise ValueError(f"--config {args.config}: the cluster reads it from the uploaded "
                             f"working directory, so it must lie inside it ({working_dir})")
        rel = str(path.relative_to(working_dir.resolve()))
        argv = [rel if a == args.config else a for a in argv]
        argv = [f"--config={rel}" if a == f"--config={args.config}" else a for a in argv]
    return " ".join(shlex.quote(x) for x in ["mqt", job, *argv])


def runtime_env(working_dir: Path | None, env: list[str]) -> dict:
    out: dict = {}
    if working_dir is not None:
        out["working_dir"] = str(working_dir)
        out["excludes"] = EXCLUDES
    pairs = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r}: give KEY=VALUE")
        pairs[key] = value
    if pairs:
        out["env_vars"] = pairs
    return out


def submit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mqt submit", description=__doc__.split("\n")[0])
    p.add_argument("--address", help="the cluster's dashboard, http://HOST:8265 "
                   "(default: RAY_ADDRESS)")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and exit")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working "
                   "directory (default: here)")
    p.add_argument("--no-working-dir", action="store_true",
                   help="upload nothing: the cluster's image holds the project")
    p.add_argument("--submission-id", help="the job's id (default: mqt-JOB-<random>)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the job (repeatable)")
    p.add_argument("--no-check", action="store_true", help="check only the config's names "
                   "and types here, not the job's own validation")
    p.add_argument("job", help="the mqt job: annotate, train, eval, ...")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the job's arguments")
    a = p.parse_args(argv)
    working_dir = None if a.no_working_dir else Path(a.working_dir)
    try:
        if a.job in NOT_SUBMITTED:
            raise ValueError(f"{a.job!r} is not a job to submit")
        if working_dir is not None and not working_dir.is_dir():
            raise ValueError(f"--working-dir {a.working_dir}: no such folder")
        args = check_job(a.job, a.args, validate=not a.no_check)
        command = entrypoint(a.job, a.args, working_dir, args)
        env = runtime_env(working_dir, a.env)
        address = address_of(a.address)
        jobs = client(address)
    except (ConfigError, ValueError) as e:  # ClusterUnreachable is a ValueError
        print(f"mqt submit: {e}", file=sys.stderr)
        return 2
    sid = a.submission_id or f"mqt-{a.job}-{uuid.uuid4().hex[:8]}"
    try:
        sid = send(jobs, entrypoint=command, submission_id=sid, runtime_env=env,
                   metadata={"mqt_job": a.job})
    except RuntimeError as e:  # the Jobs API's refusal: a duplicate id, a bad runtime env
        print(f"mqt submit: {address}: {e}", file=sys.stderr)
        return 1
    print(f"submitted {sid} to {address}: {command}", flush=True)
    if a.no_wait:
        print(sid)
        return 0
    return follow(jobs, sid)


def send(jobs, timeout_s: float = 60.0, **job) -> str:
    """`submit_job`, asked again while the cluster says it has no job agent yet (a head
    that has just started: "No available agent to submit job, please try again later")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return jobs.submit_job(**job)
        except RuntimeError as e:
            if "try again later" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def follow(jobs, sid: str) -> int:
    """Print the job's logs as they come; 0 if it SUCCEEDED, else 1 with its status and
    message. Ctrl-C stops following only."""
    try:
        asyncio.run(_tail(jobs, sid))
        status = wait_done(jobs, sid)
    except KeyboardInterrupt:
        print(f"\nstopped following {sid}; it is still running: mqt jobs status {sid}, "
              f"mqt jobs stop {sid}", file=sys.stderr)
        return 130
    info = jobs.get_job_info(sid)
    if status == "SUCCEEDED":
        print(f"{sid}: SUCCEEDED", file=sys.stderr)
        return 0
    print(f"{sid}: {status}: {info.message or ''}".rstrip(": "), file=sys.stderr)
    return 1


async def _tail(jobs, sid: str) -> None:
    async for lines in jobs.tail_job_logs(sid):
        print(lines, end="", flush=True)


def wait_done(jobs, sid: str, timeout_s: float = 60.0) -> str:
    """The job's final status (the log stream can end a moment before the status does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(sid).value)
        if status in DONE or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def manage(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mqt jobs", description="the cluster's Ray jobs")
    p.add_argument("--address", help="the cluster's dashboard (default: RAY_ADDRESS)")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("list", help="every job: id, status, entrypoint")
    for name, help_ in (("status", "a job's status and message"), ("logs", "a job's logs"),
                        ("stop", "stop a running job")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("id")
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="keep printing until it ends")
    a = p.parse_args(argv)
    try:
        jobs = client(address_of(a.address))
        if a.what == "list":
            for j in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
                print(f"{j.submission_id or j.job_id}\t{j.status.value}\t{j.entrypoint}")
        elif a.what == "status":
            info = jobs.get_job_info(a.id)
            print(f"{a.id}\t{info.status.value}\t{info.message or ''}".rstrip())
        elif a.what == "logs":
            if a.follow:
                return follow(jobs, a.id)
            print(jobs.get_job_logs(a.id), end="")
        else:
            print(f"{a.id}: {'stopping' if jobs.stop_job(a.id) else 'not running'}")
    except ClusterUnreachable as e:
        print(f"mqt jobs: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:  # an unknown id: the client's error
        print(f"mqt jobs: {e}", file=sys.stderr)
        return 1
    return 0
