"""Cell-colour accuracy of the shipped default per m, split by whether the mosaic's shapes
share one colour (then position is not needed), from the eval's per-question rows:

    .venv/bin/python -m bench.eval_flat_mosaic [results.parquet]

(default docs/eval/results.parquet; the previous weights' rows: `git show
1a49ad2:docs/eval/results.parquet > /tmp/old.parquet`.)
"""

import collections
import sys

import pyarrow.parquet as pq

from mqt.data import mosaic_examples

MOSAICS = 60  # the eval's mosaic_images (docs/default-model.md)


def main(path: str = "docs/eval/results.parquet") -> None:
    rows = pq.read_table(path).to_pylist()
    examples = {e.id: e for e in mosaic_examples("test", MOSAICS, seed=0)}
    hits: dict = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        e = examples.get(r["id"])
        if r["task"] != "vqa" or e is None or e.meta["kind"] != "cell_color":
            continue
        one = len({c.color for c in e.meta["cells"] if c.kind == "shape"}) == 1
        hits[r["m"], one][0] += r["correct"]
        hits[r["m"], one][1] += 1
    print("| m | one colour in the mosaic | several colours |")
    for m in sorted({m for m, _ in hits}):
        cells = [f"{100 * hits[m, one][0] / hits[m, one][1]:.1f}% of {hits[m, one][1]}"
                 for one in (True, False)]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
