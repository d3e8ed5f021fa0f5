"""The engine actors a job gets when it does not say (pipeline/sizing.py)."""

from pipeline.sizing import Sizing, needs, size


def test_cpu_clusters_get_one_thread_actors_then_wider_ones():
    assert size(2, 0) == Sizing(2, 1, 0.5, 0.0)  # the measured best on 2 cores
    assert size(1, 0) == Sizing(1, 1, 0.5, 0.0)
    assert size(7.0, 0) == Sizing(7, 1, 0.5, 0.0)
    assert size(16, 0) == Sizing(8, 2, 1.0, 0.0)
    assert size(64, 0) == Sizing(8, 8, 4.0, 0.0)
    # half a logical CPU per thread: the decode tasks always have CPUs left
    for cpus in (1, 2, 3, 8, 12, 16, 48, 96):
        s = size(cpus, 0)
        assert s.actors * s.cpus_per_actor <= max(cpus, 1) / 2 + 0.5, (cpus, s)


def test_gpu_clusters_get_one_actor_per_gpu():
    assert size(16, 4) == Sizing(4, 2, 1.0, 1.0)
    assert size(8, 1) == Sizing(1, 4, 1.0, 1.0)
    assert size(2, 2) == Sizing(2, 1, 1.0, 1.0)


def test_what_is_given_is_kept():
    assert size(16, 4, actors=2) == Sizing(2, 8, 4.0, 0.0)  # actors given: CPU actors
    assert size(2, 0, actors=1) == Sizing(1, 2, 1.0, 0.0)
    assert size(16, 4, gpus_per_actor=0.5) == Sizing(8, 1, 1.0, 0.5)
    assert size(2, 0, actors=1, threads=2, cpus_per_actor=1) == Sizing(1, 2, 1, 0.0)
    assert size(16, 0, threads=4) == Sizing(4, 4, 2.0, 0.0)


def test_chosen_actors_are_capped_by_what_is_free_with_a_cpu_left_for_decoding():
    assert size(2, 0, free=(2.0, 0)) == Sizing(2, 1, 0.5, 0.0)
    assert needs(Sizing(2, 1, 0.5, 0.0)) == (2.0, 0.0)
    # a Serve app holds 0.5 or 1.5 of 2 CPUs: one actor, and a CPU for the decode tasks
    assert size(2, 0, free=(1.5, 0)) == Sizing(1, 1, 0.5, 0.0)
    assert size(2, 0, free=(0.5, 0)) == Sizing(1, 1, 0.5, 0.0)
    assert size(16, 4, free=(16, 1)) == Sizing(1, 2, 1.0, 1.0)
    assert size(16, 4, free=(3, 4)) == Sizing(2, 2, 1.0, 1.0)
    assert size(2, 0, actors=2, free=(0.5, 0)) == Sizing(2, 1, 0.5, 0.0)  # given: kept
