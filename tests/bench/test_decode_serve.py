"""The decode and serve benchmarks' own logic, cut down: `python -m bench.decode` on small
JPEGs (no Ray), and bench.serve's table and plot from a stored result."""

import json

from bench import decode as bench_decode
from bench import serve as bench_serve
from jobs import cli


def test_the_decode_bench_times_both_paths_and_writes_its_table(tmp_path):
    cfg = cli.configure(bench_decode, None, ["images=2", "width=1200", "height=900",
                                             "repeats=2", f"output={tmp_path}",
                                             f"docs={tmp_path / 'docs'}"], None)
    bench_decode.validate(cfg)
    result = bench_decode.main(cfg)
    assert len(result["rates"]["full"]) == len(result["rates"]["draft"]) == 2
    assert result["max_abs_diff"] > 0  # the draft path ran
    text = (tmp_path / "docs" / "decode.md").read_text()
    assert "speed-up" in text and (tmp_path / "docs" / "decode.png").stat().st_size > 0


def test_the_serve_bench_reports_the_saturated_rate_and_its_ratio(tmp_path):
    cells = [{"repeat": r, "m": m, "clients": c, "requests": 8, "wall_s": 1.0,
              "requests_per_s": rps, "p50_s": 0.1 * c, "p95_s": 0.2 * c, "p99_s": 0.3 * c}
             for r in (0, 1) for m, c, rps in ((1, 1, 3.0), (1, 4, 6.0 + r), (1, 16, 5.0))]
    result = {"device": "test", "cells": cells, "annotate": {"1": [8.0, 8.0]},
              "autoscale": {"samples": [[1.0, 1, 1, 3], [2.0, 16, 1, 5], [3.0, 16, 2, 6],
                                        [4.0, 0, 2, 0], [5.0, 0, 1, 0]]}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    cfg = cli.configure(bench_serve, None, ["ms=[1]", "concurrency=[1,4,16]",
                                            f"from_json={path}", f"output={tmp_path}",
                                            "load=[[1,1],[16,2],[0,2]]"], None)
    bench_serve.validate(cfg)
    bench_serve.main(cfg)
    text = (tmp_path / "serve.md").read_text()
    # the most req/s over the client counts, per repeat: 6 and 7, against 8 rows/s
    assert "| 1 | 6.50 (6.00..7.00) | 8.00 (8.00..8.00) | 0.81 (0.75..0.88) |" in text
    assert "peak 2 replicas" in text and "1 running at the end" in text
    assert (tmp_path / "serve.png").stat().st_size > 0
