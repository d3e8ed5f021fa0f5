"""The engine actors a job gets when it does not say (pipeline/sizing.py)."""

from mqt.config import preset
from mqt.configtree import merge
from pipeline.sizing import (
    PROMPT_TOKENS,
    RUNTIME_BYTES,
    Sizing,
    actor_memory,
    batch_bytes,
    fit_memory,
    needs,
    size,
)


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


def test_actor_memory_is_the_runtime_weights_and_a_batch_at_M_with_a_quarter_to_spare():
    gb = 10**9
    base = actor_memory(0, 0)
    assert base == 5 * RUNTIME_BYTES // 4
    assert actor_memory(4 * gb, 0) == 5 * (RUNTIME_BYTES + 4 * gb) // 4
    # logits and KV cache of every position of the batch, float32
    cfg = merge(preset("tiny"), {"query": {"num_queries": 16}, "lm": {
        "vocab_size": 1000, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2}},
        "model").validate()
    kv_width = 2 * 3 * 2 * cfg.lm.head_dim  # keys and values x layers x KV heads x width
    positions = 2 * (16 + PROMPT_TOKENS)
    assert batch_bytes(cfg, 2) == positions * (1000 + kv_width) * 4
    assert actor_memory(0, batch_bytes(cfg, 2)) - base == \
        -(-5 * positions * (1000 + kv_width) * 4 // 4)


def test_chosen_actors_fit_the_free_memory_and_no_request_exceeds_the_cluster():
    gb = 10**9
    assert fit_memory(2, 2 * gb, free=16 * gb, total=16 * gb) == (2, 2 * gb)
    assert fit_memory(8, 2 * gb, free=5 * gb, total=16 * gb) == (2, 2 * gb)
    assert fit_memory(8, 2 * gb, free=1 * gb, total=16 * gb) == (1, 2 * gb)  # one at least
    assert fit_memory(8, 2 * gb, free=1 * gb, total=16 * gb, chosen=False) == (8, 2 * gb)
    assert fit_memory(2, 20 * gb, free=16 * gb, total=16 * gb) == (1, 16 * gb)  # its share
    assert fit_memory(4, 5 * gb, free=0, total=0) == (4, 5 * gb)  # no memory reported


def test_weight_bytes_counts_what_the_built_model_holds_without_building_it():
    from mqt.model import build_model, weight_bytes

    for over in ({}, {"lm": {"tie_embeddings": False, "lora_rank": 4,
                             "lora_targets": ["q_proj", "v_proj", "up_proj", "down_proj"]}}):
        cfg = merge(preset("tiny"), over, "model").validate()
        built = sum(p.numel() for p in build_model(cfg).parameters())
        assert weight_bytes(cfg) == 4 * built and weight_bytes(cfg, 2) == 2 * built
