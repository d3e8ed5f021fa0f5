"""Resident memory per Ray process while `mqt annotate` streams the generated corpus of the
memory benchmark (run `python -m bench.annotate repeats=0 rss_rows=200000
output=runs/bench-annotate-mem` first). Prints (seconds, {process: MB}) every 20 s:

    .venv/bin/python -m bench.memprobe
"""

import collections
import json
import threading
import time
from pathlib import Path

import psutil

from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate

CORPUS = Path("runs/bench-annotate-mem/rss-corpus-200000")


def by_process(me: psutil.Process) -> dict[str, int]:
    mb: collections.Counter = collections.Counter()
    for p in [me, *me.children(recursive=True)]:
        try:
            name = "driver" if p == me else p.name()[:40]
            mb[name] += p.memory_info().rss // 2**20
        except psutil.Error:  # a worker that just exited
            pass
    return dict(mb.most_common(8))


def sample(snaps: list, stop: threading.Event) -> None:
    me, t0 = psutil.Process(), time.time()
    while not stop.wait(20):
        snaps.append((round(time.time() - t0), by_process(me)))


def main() -> None:
    job = AnnotateConfig(preset="tiny", checkpoint="none", source=str(CORPUS),
                          output="runs/memprobe", overwrite=True, progress=False, batch_size=64,
                          block_rows=256, rows_per_part=5000,
                          policy=PolicyArgs(default=1),
                          tasks={"caption": {"max_new_tokens": 1}})
    snaps: list = []
    stop = threading.Event()
    thread = threading.Thread(target=sample, args=(snaps, stop))
    thread.start()
    try:
        annotate(job)
    finally:
        stop.set()
        thread.join()
    for s in snaps:
        print(json.dumps(s))


if __name__ == "__main__":
    main()
