"""The `mqt` CLI: config resolution, clear errors before work, and the first jobs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from jobs.cli import main, resolve


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump({"preset": "tiny", "ms": [1, 2], "new_tokens": 4}))
    _, cfg = resolve("cost", str(f), ["new_tokens=8", "model.query.num_queries=32"], None)
    assert (cfg.preset, cfg.ms, cfg.new_tokens) == ("tiny", [1, 2], 8)
    assert cfg.model == {"query": {"num_queries": 32}}


@pytest.mark.parametrize("args,message", [
    (["cost", "nosuch=1"], "nosuch: unknown field"),
    (["cost", "preset=tiny", "model.query.num_querys=3"], "model.query.num_querys"),
    (["cost", "preset=tiny", "ms=[1,99]"], "ms: 99 is outside 1..16"),
    (["cost", "--preset", "gpt5"], "unknown preset"),
    (["generate", "images=[/no/such.png]"], "images: no such file"),
    (["generate"], "images: give at least one"),
])
def test_bad_config_fails_before_work(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_cost_llava_7b_prints_paper_column(tmp_path):
    proc = run("cost", "--preset", "llava-7b", f"output={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| llava-7b | 256 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    total, paper = float(cells[6]), float(cells[8])
    assert paper == 4.52 and abs(total / paper - 1) < 0.05
    assert (tmp_path / "cost.md").exists()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["preset"] == "llava-7b"


def test_print_config():
    proc = run("generate", "--print-config", "question=hi", "m=[3]")
    assert proc.returncode == 0
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["question"] == "hi" and cfg["m"] == [3] and cfg["preset"] == "tiny"


def test_generate_writes_answers_and_config(tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    assert main(["generate", f"images=[{paths[0]},{paths[1]}]", "m=[1,16]",
                 "max_new_tokens=3", f"output={out}"]) == 0
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [(r["image"], r["m"]) for r in rows] == [(paths[0], 1), (paths[1], 1),
                                                     (paths[0], 16), (paths[1], 16)]
    assert all(1 <= r["new_tokens"] <= 3 for r in rows)
    assert (out / "config.yaml").exists()
