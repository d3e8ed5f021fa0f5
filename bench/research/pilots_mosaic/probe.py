"""Linear probes: can the colour/shape/digit of cell (r, c) be read from a representation?

Representations: the frozen grid (196 x 96 flattened), the MQT outputs at m (m x 96 before
the projection, flattened), and their mean over the m tokens (what the alignment stage
trains). One linear (ridge) probe per grid size with a head per cell and attribute; trained on
train mosaics, scored on test mosaics (only cells where the attribute applies).
usage: python probe.py [checkpoint folder] [n_train] [n_test]
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from bench.research.pilots_mosaic.common import (
    cell_labels,
    mosaics,
    query_outputs,
    test_cache,
    train_feats,
)
from mqt.load import ModelArgs, load_model

K = {"color": 9, "shape": 4, "digit": 11}
LAMS = (1e-3, 1e-2, 1e-1, 1.0)  # times the kernel's mean diagonal
NA = {"color": 8, "shape": 3, "digit": 10}


def fit_probe(xtr, ytr, xte, yte, grid, lam=0.1):
    """Ridge-regression classifier on one-hot targets (dual form: n x n kernel)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-4
    xtr, xte = ((xtr - mu) / sd).double(), ((xte - mu) / sd).double()
    kern = xtr @ xtr.T
    lam = lam * float(kern.diagonal().mean())
    solve = torch.linalg.cholesky(kern + lam * torch.eye(len(xtr), dtype=kern.dtype))
    acc = {}
    for k in K:
        y = F.one_hot(ytr[k], K[k]).flatten(1).double()  # (n, cells*K)
        alpha = torch.cholesky_solve(y, solve)
        pred = (xte @ (xtr.T @ alpha)).view(len(xte), -1, K[k]).argmax(-1)
        keep = yte[k] != NA[k]
        acc[k] = (pred[keep] == yte[k][keep]).float().mean().item()
    return acc


def main():
    torch.set_num_threads(2)
    ckpt = sys.argv[1] if len(sys.argv) > 1 else ""
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    model = load_model(ModelArgs(preset="mqt-smol", checkpoint=ckpt)).eval()
    tr, te = mosaics("train", n_train), mosaics("test", n_test)
    cache = test_cache(model, n_test)
    ftr, fte = train_feats(tr), cache.get(te)
    reps = {"grid": (ftr.flatten(1), fte.flatten(1))}
    for m in (1, 4, 16, 64):
        a, b = query_outputs(model.query, ftr, m), query_outputs(model.query, fte, m)
        reps[f"mqt m={m}"] = (a.flatten(1), b.flatten(1))
        if m > 1:
            reps[f"mqt mean m={m}"] = (a.mean(1), b.mean(1))
    results = {}
    for name, (xtr, xte) in reps.items():
        row = {}
        for grid in (2, 3):
            itr = [i for i, ex in enumerate(tr) if ex.meta["grid"] == grid]
            ite = [i for i, ex in enumerate(te) if ex.meta["grid"] == grid]
            ytr = cell_labels([tr[i] for i in itr], grid)
            cut = int(0.8 * len(itr))  # the ridge strength is picked on a slice of train
            head = {k: v[:cut] for k, v in ytr.items()}
            tail = {k: v[cut:] for k, v in ytr.items()}
            best = max((sum(fit_probe(xtr[itr[:cut]], head, xtr[itr[cut:]], tail, grid,
                                      lam).values()), lam) for lam in LAMS)[1]
            acc = fit_probe(xtr[itr], ytr, xte[ite], cell_labels([te[i] for i in ite], grid),
                            grid, best)
            row.update({f"{grid}x{grid} {k}": round(100 * v, 1) for k, v in acc.items()})
        results[name] = row
        print(name, row, flush=True)
    out = f"runs/pilots-mosaic/probe-{ckpt.replace('/', '_') or 'shipped'}.json"
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
