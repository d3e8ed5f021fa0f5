"""Pipeline test setup: one local Ray instance for the whole session (ray.init takes ~10 s).

Tests that need Ray ask for the `ray_local` fixture; the others never start it. Two CPUs
match these machines; the jobs give their actors fractional CPUs so read tasks still run.
"""

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()  # only what this fixture started; never `ray stop`
