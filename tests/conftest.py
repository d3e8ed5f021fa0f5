"""Shared test setup: offline hub, quiet tokenizers, the CUDA skip for `gpu` tests, one local
Ray instance for the whole session (`ray_local`), and a real S3-protocol server on loopback
for s3:// tests (`s3_endpoint`, `s3_bucket`)."""

import os
import re
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Dummy credentials for the loopback S3 server, set before any Ray worker starts (workers
# inherit the environment); no request ever leaves 127.0.0.1.
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that asks (ray.init takes ~10 s); the others never start
    it. Two CPUs match these machines; jobs give their actors fractional CPUs so read tasks
    still run. Shut down at the end: only what this fixture started, never `ray stop`."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """http://127.0.0.1:PORT of a moto S3 server in this process, stopped after the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket per test: (endpoint, bucket name, pyarrow S3FileSystem)."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http",
                           region="us-east-1", allow_bucket_creation=True)
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    fs.create_dir(name)
    return s3_endpoint, name, fs


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
