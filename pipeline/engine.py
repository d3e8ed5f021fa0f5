"""The engine: one model, loaded once, answering batches of rows at their m and pricing them.

Ray Data calls it as the model stage of a batch job (`Dataset.map_batches` with an actor
pool), and a Serve deployment or a plain loop call it the same way: it is a plain class
and imports no Ray. `Engine.__init__` loads the model. `__call__` takes decoded rows
(pipeline.decode.DECODED_SCHEMA), asks the token policy for m per row, runs the vision
encoder and the MQT once at the largest m of the batch, slices each row's first m visual
tokens (prefix property), and answers rows in groups of (task, m): caption and VQA rows
generate text, multiple-choice rows score their options by log-likelihood. Rows come out
in input order as OUTPUT_SCHEMA; error rows pass through with only their error set, and a
group the model fails on becomes error rows too. A row may carry its own `m` (an int in
1..M: a serving request's `visual_tokens`) and `max_new_tokens`, which win over the policy
and its task's answer length.

Cascades (pipeline/scheduler/policy.py `Cascade(m1, m2, t)`): such a row is answered at m1 first; if
its confidence is below t it is answered again at m2 from the same MQT output (the batch
was encoded at the largest m2), and the m2 answer is the row's: `m`, `visual_tokens`,
`prompt_tokens`, `new_tokens`, `confidence` are those of the final answer, `flops` is what
the row spent in all, cost(m1) + cost(m2 | P + m1 cached) - vision - query(m1) for an
escalated row, `seconds` both attempts. The second attempt reuses the image encoding, the
m1 queries and the LM's KV cache of the prompt's first P + m1 positions (the template's P
text tokens before the image and the m1 visual tokens, kept from the m1 answer:
`mqt.model.PromptPrefix`), so its LM reads only the m2 - m1 new visual tokens and the text
after the image (`reuse_prefix=False`: the whole prompt again, no cache held).
With a ledger, the m1 attempt is reserved first; an escalation is reserved on its own
before it runs (upper bound at m2 less the shared part), in the job's ledger and, if given,
in `escalation_ledger` too (the plan's escalation budget, so escalations cannot eat what
later rows' first attempts need); a refused or failed escalation keeps the m1 answer.

With a ledger, a batch holds each row's upper bound (its task's max new tokens; in a
measured quota at the slowest recent seconds per FLOP, first at the margin) before it runs,
so near the end of a quota the holds of a batch can exceed what its rows will spend. Rows
refused then ask once more after the granted rows of the batch are charged and their unused
holds are back, before any escalation; only rows refused twice become error rows. (In the
time-profile benchmark of docs/scheduler.md the last row of paced measured jobs was refused
although its time fitted.) Every attempt still reserves first: spend never passes Q.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import torch
from transformers.utils import logging as hf_logging

from mqt.config import check_m
from mqt.configtree import from_dict
from mqt.cost import lm_visual_tokens, query_flops, scored_flops, total_flops, vision_flops
from mqt.load import ModelArgs, load_model
from mqt.model import PromptPrefix
from mqt.tasks import TASKS, Task
from pipeline.decode import pixels_to_image
from pipeline.scheduler.ledger import REFUSED, LedgerClient
from pipeline.scheduler.policy import Cascade, TokenPolicy, first_m, max_m

OUTPUT_SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("question", pa.string()),
    ("prediction", pa.string()), ("reference", pa.string()), ("m", pa.int32()),
    ("visual_tokens", pa.int32()),
    ("prompt_tokens", pa.int32()), ("new_tokens", pa.int32()), ("flops", pa.int64()),
    ("seconds", pa.float64()), ("confidence", pa.float64()), ("error", pa.string()),
    ("max_new_tokens", pa.int32()),  # the answer length the row was allowed
])


@dataclass
class Answer:
    """What the model said for one row and what it cost."""

    output: str
    prompt_tokens: int
    new_tokens: int
    flops: int
    confidence: float


class Engine:
    """One model per actor; maps a pyarrow batch of decoded rows to OUTPUT_SCHEMA rows."""

    def __init__(self, model_args: dict, policy: TokenPolicy, threads: int = 0,
                 tasks: dict[str, Task] | None = None, ledger: LedgerClient | None = None,
                 escalation_ledger: LedgerClient | None = None, reuse_prefix: bool = True,
                 on_tokens: Callable[[list[str], list[int]], None] | None = None):
        hf_logging.disable_progress_bar()  # one "Loading weights" bar per actor is noise
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(from_dict(ModelArgs, model_args)).eval().to(self.device)
        self.policy = policy.bind(self.model.num_queries)
        self.tasks = dict(TASKS) if tasks is None else tasks  # with the job's overrides
        self.ledger = ledger  # when the job has a quota
        # a second LedgerClient that escalations also draw on (the plan's escalation budget,
        # pipeline.scheduler.cascade.escalation_budget), so they cannot starve later first attempts
        self.escalation_ledger = escalation_ledger
        # an escalation continues from the LM's KV cache of its m1 prompt prefix (False: it
        # reads the whole prompt again, holding no cache between the two attempts)
        self.reuse_prefix = reuse_prefix
        # streaming: called from the thread the engine runs in with (row ids, each row's new
        # token) at every generation step of a first attempt (a row past its answer gets the
        # pad token); the served endpoint sends them on as they come
        self.on_tokens = on_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [dict(r, error=r["error"] or self._bad_m(r)) for r in batch.to_pylist()]
        out = [error_row(r, r["error"]) for r in rows]
        ok = [i for i, r in enumerate(rows) if not r["error"]]
        if len(ok) < len(rows):  # a pacing policy stops expecting them
            bad = [r for r in rows if r["error"]]
            self.policy.skipped([r["task"] for r in bad], [r["question"] for r in bad])
        if ok:
            self._answer([rows[i] for i in ok], [out[i] for i in ok])
            for i in ok:
                out[i]["max_new_tokens"] = self._new_tokens(rows[i])
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)

    def _answer(self, rows: list[dict], out: list[dict]) -> None:
        """Fill `out` (same order as `rows`) in place, one (task, m) group at a time, then
        escalate the low-confidence rows of cascades. With a ledger, rows whose holds are
        refused ask once more after the granted rows are charged (the module docstring)."""
        choices = self.policy.choose([r["task"] for r in rows], [r["question"] for r in rows])
        # a row's own m (a serving request's, a manifest's `visual_tokens`) wins over the policy
        choices = [c if r.get("m") is None else r["m"] for r, c in zip(rows, choices, strict=True)]
        todo = list(range(len(rows)))
        answered = []  # per ask: (row indices, their MQT output, their prompt prefixes)
        for _ in range(2 if self.ledger is not None else 1):
            held, keys = todo, None
            if self.ledger is not None:
                held, keys = self._reserve(rows, choices, todo)
            if held:
                answered.append((held, *self._first(rows, out, choices, held, keys)))
            granted = set(held)
            todo = [i for i in todo if i not in granted]
            if not todo or not granted:  # a second ask helps once this batch's holds are back
                break
        for i in todo:
            out[i].update(error=REFUSED)
        for held, embeds, prefixes in answered:  # first attempts before any escalation
            self._escalate([rows[i] for i in held], [out[i] for i in held],
                           [choices[i] for i in held], embeds, prefixes)

    def _first(self, rows, out, choices, idx: list[int], keys: list[str] | None):
        """Answer rows `idx` at their first m (charging their holds `keys`, if any); returns
        their MQT output (len(idx), top m, H) and, per row, the prompt prefix a cascade row
        keeps for its escalation (None for the others)."""
        sub = [rows[i] for i in idx]
        t0 = time.perf_counter()
        embeds = self._encode(sub, max(max_m(choices[i]) for i in idx))  # once per image
        share = (time.perf_counter() - t0) / len(idx)
        prefixes = self._run_groups(sub, [out[i] for i in idx],
                                    [first_m(choices[i]) for i in idx], embeds, share,
                                    keep=[self.reuse_prefix and isinstance(choices[i], Cascade)
                                          for i in idx])
        if keys is not None:
            _settle(self.ledger, keys, [out[i] for i in idx])
        return embeds, prefixes

    def _run_groups(self, rows, out, ms, embeds, share: float, keep=None, prefixes=None):
        """Answer each (task, m) group from `embeds` (B, >= m, H); a failed group's rows get
        the error. `share`: encoding seconds per row, added to each row's time. `keep[i]`:
        row i keeps its prompt prefix at its m (a cascade's first attempt); `prefixes[i]`:
        row i continues from that prefix (its escalation). Returns the kept prefixes per row
        (None where not kept)."""
        kept: list[PromptPrefix | None] = [None] * len(rows)
        prefixes = prefixes or [None] * len(rows)
        starts = [p.m if p is not None else 0 for p in prefixes]
        for (task, m, start, _), idx in _groups(rows, ms, starts, self._new_tokens).items():
            want = keep is not None and any(keep[i] for i in idx)
            prefix = PromptPrefix.stack([prefixes[i] for i in idx]) if start else None
            t1 = time.perf_counter()
            try:
                answers, group = self._run_group(task, m, [rows[i] for i in idx],
                                                 embeds[idx, :m], prefix, want)
            except Exception as e:  # a model failure loses this group, not the job
                for i in idx:
                    out[i].update(error=f"model: {type(e).__name__}: {e}")
                continue
            per_row = share + (time.perf_counter() - t1) / len(idx)
            for j, (i, a) in enumerate(zip(idx, answers, strict=True)):
                out[i].update(_answer_columns(self.model.cfg, m, a, per_row))
                if group is not None and keep[i]:
                    kept[i] = group.rows([j])
        return kept

    def _escalate(self, rows, out, choices, embeds, prefixes) -> None:
        """Answer again at m2 the cascade rows whose m1 answer is not confident enough,
        continuing from their m1 prompt prefixes (`prefixes`, per row)."""
        idx = [i for i, c in enumerate(choices) if isinstance(c, Cascade)
               and out[i]["error"] is None and c.escalates(out[i]["confidence"])]
        ledgers = [x for x in (self.escalation_ledger, self.ledger) if x is not None]
        keys = [[] for _ in ledgers]  # per ledger, the keys of the granted escalations
        if idx and ledgers:
            idx, keys = self._reserve_escalations(ledgers, rows, choices, idx, prefixes)
        if not idx:
            return
        trial = [dict(out[i]) for i in idx]  # the m2 answers land here; kept if they work
        self._run_groups([rows[i] for i in idx], trial, [choices[i].m2 for i in idx],
                         embeds[idx], 0.0, prefixes=[prefixes[i] for i in idx])
        extra = self._keep_m2(out, idx, trial, choices)
        for ledger, ks in zip(ledgers, keys, strict=True):
            _settle(ledger, ks, [{"flops": x, "seconds": t["seconds"], "task": t["task"]}
                                 for x, t in zip(extra, trial, strict=True)])

    def _keep_m2(self, out, idx, trial, choices) -> list[int | None]:
        """Rows whose m2 answer worked take it, charged for both attempts less what they
        share; the others keep their m1 answer. Returns what each escalation added (None:
        failed, nothing spent)."""
        extra = [None if t["error"] else t["flops"] - self._shared(choices[i].m1)
                 for i, t in zip(idx, trial, strict=True)]
        for i, t, x in zip(idx, trial, extra, strict=True):
            if x is not None:
                out[i].update(t, flops=out[i]["flops"] + x,
                              seconds=round(out[i]["seconds"] + t["seconds"], 6))
        return extra

    def _reserve_escalations(self, ledgers, rows, choices, idx, prefixes):
        """Reserve each escalation on its own (upper bound at m2 from its prompt prefix,
        less the shared part) in every ledger; a refused one keeps its m1 answer. Returns
        the granted indices and, per ledger, their keys."""
        bounds = [self.bound(rows[i], choices[i].m2, _length(prefixes[i]))
                  - self._shared(choices[i].m1) for i in idx]
        ids = [f"{rows[i]['id']}+m{choices[i].m2}" for i in idx]
        keep, keys = list(range(len(idx))), []
        for ledger in ledgers:  # all or none: a refusal frees the holds taken before it
            ks, ok = ledger.reserve([ids[j] for j in keep], [bounds[j] for j in keep],
                                    [rows[idx[j]]["task"] for j in keep])
            for prev, pk in zip(ledgers, keys, strict=False):
                prev.release([k for k, g in zip(pk, ok, strict=True) if not g])
            keys = [[k for k, g in zip(pk, ok, strict=True) if g] for pk in [*keys, ks]]
            keep = [j for j, g in zip(keep, ok, strict=True) if g]
        return [idx[j] for j in keep], keys

    def _shared(self, m1: int) -> int:
        """What an escalation from m1 reuses: the vision encoder and the MQT up to m1."""
        return vision_flops(self.model.cfg) + query_flops(self.model.cfg, m1)

    def _reserve(self, rows, choices, idx: list[int]) -> tuple[list[int], list[str]]:
        """Ask the ledger for the upper bound of each row of `idx` at its first m. Returns the
        granted indices and their keys (the refused ones become error rows unless a second
        ask grants them)."""
        bounds = [self.bound(rows[i], first_m(choices[i])) for i in idx]
        keys, granted = self.ledger.reserve([rows[i]["id"] for i in idx], bounds,
                                            [rows[i]["task"] for i in idx])
        return ([i for i, ok in zip(idx, granted, strict=True) if ok],
                [k for k, ok in zip(keys, granted, strict=True) if ok])

    def _bad_m(self, row: dict) -> str | None:
        """The error of a row whose own m is outside 1..M (None: no own m, or a good one)."""
        if row.get("m") is None:
            return None
        try:
            check_m("m", row["m"], self.model.num_queries)
        except ValueError as e:
            return f"bad request: {e}"
        return None

    def _new_tokens(self, row: dict) -> int:
        """The most tokens the row's answer may have: its own `max_new_tokens`, else its
        task's."""
        own = row.get("max_new_tokens")
        return own if own is not None else self.tasks[row["task"]].max_new_tokens

    def bound(self, row: dict, m: int, cached: int = 0) -> int:
        """Most FLOPs the row can cost at m: the cost model at its most new tokens
        (`cached`: prompt positions its answer continues from)."""
        t = self.tasks[row["task"]]
        T = self.model.prompt_text_tokens(t.format(row["question"] or "", row["options"] or ()))
        if t.scoring == "loglik":  # exactly what `_pick` charges: the options are known
            return scored_flops(self.model.cfg, m, T,
                                self.model.option_token_counts(row["options"]), cached)
        return int(total_flops(self.model.cfg, m, T, self._new_tokens(row), cached).total)

    @torch.no_grad()
    def _encode(self, rows: list[dict], m: int) -> torch.Tensor:
        # decoded at the encoder's size, so preprocess only normalises (or resizes a guess)
        images = [pixels_to_image(r["pixels"]) for r in rows]
        pv = self.model.preprocess(images).to(self.device)  # (B, 3, S, S)
        return self.model.encode_images(pv, m)

    def _run_group(self, task: str, m: int, rows: list[dict], embeds, prefix=None,
                   keep: bool = False) -> tuple[list[Answer], PromptPrefix | None]:
        """The group's answers at m (continuing from `prefix`, if given), each charged what
        it ran, and with `keep` the group's prompt prefix at m."""
        t = self.tasks[task]
        questions = [t.format(r["question"] or "", r["options"] or ()) for r in rows]
        cached = _length(prefix)
        if t.scoring == "loglik":
            options = [r["options"] for r in rows]
            scores, kept = self.model.option_logprobs_cached(questions, options, m, embeds,
                                                             prefix, keep)
            return [self._pick(q, opts, s, m, cached) for q, opts, s in zip(
                questions, options, scores, strict=True)], kept
        step = None
        if self.on_tokens is not None and prefix is None:
            ids = [r["id"] for r in rows]
            step = lambda tokens: self.on_tokens(ids, tokens)  # noqa: E731
        gens, kept = self.model.generate_cached(questions, m, embeds, self._new_tokens(rows[0]),
                                                prefix, keep, step)  # one length per group
        return [Answer(g.text, g.prompt_tokens, g.new_tokens,
                       total_flops(self.model.cfg, m, g.prompt_tokens, max(1, g.new_tokens),
                                   cached).total, g.mean_logprob) for g in gens], kept

    def _pick(self, question: str, options: list[str], scores: list[float], m: int,
              cached: int = 0) -> Answer:
        """The most likely option; confidence is its log-probability among the options."""
        best = max(range(len(scores)), key=scores.__getitem__)
        logp = float(torch.log_softmax(torch.tensor(scores), 0)[best])
        T = self.model.prompt_text_tokens(question)
        flops = scored_flops(self.model.cfg, m, T, self.model.option_token_counts(options),
                             cached)
        return Answer(options[best], T, 0, flops, logp)


def _settle(ledger, keys: list[str], out: list[dict]) -> None:
    """Charge what each answered row cost (its FLOPs and the seconds it took: the ledger
    counts one of them); free the hold of rows the model failed on."""
    done = [(k, o) for k, o in zip(keys, out, strict=True) if o["flops"] is not None]
    ledger.commit([k for k, _ in done], [o["flops"] for _, o in done],
                  [o["seconds"] for _, o in done], [o["task"] for _, o in done])
    ledger.release([k for k, o in zip(keys, out, strict=True) if o["flops"] is None])


def _groups(rows: list[dict], ms: list[int], starts: list[int],
            new_tokens) -> dict[tuple[str, int, int, int], list[int]]:
    """Row indices per (task, m, the m of the prefix they continue from, most new tokens),
    in first-seen order."""
    groups: dict[tuple[str, int, int, int], list[int]] = {}
    for i, (r, m, start) in enumerate(zip(rows, ms, starts, strict=True)):
        groups.setdefault((r["task"], m, start, new_tokens(r)), []).append(i)
    return groups


def _length(prefix) -> int:
    """Prompt positions a prefix caches (0: none)."""
    return prefix.length if prefix is not None else 0


def error_row(row: dict, error: str | None) -> dict:
    """An output row with only the identity columns and the error set."""
    return {"id": row["id"], "task": row["task"], "question": row["question"],
            "prediction": None, "reference": row.get("answer"), "m": None, "visual_tokens": None,
            "prompt_tokens": None, "new_tokens": None, "flops": None, "seconds": None,
            "confidence": None, "error": error,
            "max_new_tokens": row.get("max_new_tokens")}


def _answer_columns(cfg, m: int, a: Answer, seconds: float) -> dict:
    confidence = a.confidence if math.isfinite(a.confidence) else None
    return {"prediction": a.output, "m": m, "visual_tokens": lm_visual_tokens(cfg, m),
            "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "flops": int(a.flops),
            "seconds": round(seconds, 6), "confidence": confidence, "error": None}
