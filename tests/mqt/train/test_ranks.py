"""`Ranks` in two plain torch.distributed processes (gloo), without Ray: the batch slices,
the global token mean, and ranks that draw different m failing loudly."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mqt.train.steps import Ranks


def _ranks_worker(rank: int, port: int, errors) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    ranks = Ranks(rank, 2, rank)
    ranks.check_same("m", 8, step=0)  # agree: passes
    assert ranks.shard(list(range(8))) == list(range(4 * rank, 4 * rank + 4))
    n = torch.tensor(3 + 2 * rank)  # 3 and 5 answer tokens: the global mean divides by 8 / 2
    assert float(ranks.denominator(n)) == 4.0
    assert ranks.mean(torch.tensor(float(rank))) == 0.5
    assert ranks.total(3 + rank) == 7.0  # e.g. the tokens of the global batch
    try:
        ranks.check_same("m", 4 + rank, step=7)
    except RuntimeError as e:
        errors.put(str(e))
    dist.destroy_process_group()


def test_ranks_that_draw_different_m_fail_loudly():
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ranks_worker, args=(port, errors), nprocs=2)
    got = sorted(errors.get(timeout=10) for _ in range(2))
    assert got == ["step 7: ranks disagree on m: [4, 5] (by rank)"] * 2
