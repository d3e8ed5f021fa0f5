"""The shipped model's mosaic cell accuracy at m = 1 and 64, from docs/eval/results.parquet
(the same 60 test mosaics the pilots are scored on), split as the pilots split it."""
import pandas as pd

from mqt.data import mosaic_examples

exs = {ex.id: ex for ex in mosaic_examples("test", 60, seed=0)}
df = pd.read_parquet("docs/eval/results.parquet")
df = df[(df.task == "vqa") & df.id.isin(exs) & (df.kind != "mosaic/count") & df.m.isin([1, 64])]


def split(i, k):
    if k != "mosaic/cell_color":
        return k.split("/")[1]
    cols = {c.color for c in exs[i].meta["cells"] if c.kind == "shape"}
    return "cell_color/" + ("multi" if len(cols) > 1 else "single")


df["k"] = [split(i, k) for i, k in zip(df.id, df.kind, strict=True)]
t = df.groupby(["m", "k"]).correct.mean().unstack(0) * 100
t.loc["all cell"] = df.groupby("m").correct.mean() * 100
print(t.round(1))
