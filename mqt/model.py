"""The vision-language model: vision encoder + Matryoshka query transformer + causal LM.

Image features enter the text embeddings at the `<image>` token positions with one checked
`masked_scatter`. The number of visual tokens m is an explicit argument everywhere; in
`generate`, rows may ask for different m: the MQT runs once at M, each row takes the first
m visual tokens (prefix property), rows are grouped by m for the LM, and results come back
in input order.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mqt.config import LMConfig, VLMConfig
from mqt.lora import add_lora
from mqt.query import QueryTransformer, check_num_tokens
from mqt.smollm import FOLDER, smollm2_path
from mqt.text import (
    IMAGE_TOKEN,
    build_batch,
    build_continuation,
    byte_tokenizer,
    encode_answer,
    encode_prompt,
    get_template,
    load_tokenizer,
)
from mqt.vision import build_vision, preprocess


@dataclass
class Generation:
    """One generated answer and what it cost in tokens."""

    text: str
    token_ids: list[int]
    mean_logprob: float  # mean log-probability of the generated tokens: a confidence
    num_visual_tokens: int
    prompt_tokens: int  # text tokens of the prompt, visual tokens excluded
    new_tokens: int


@dataclass
class PromptPrefix:
    """The LM's KV cache over the start of each prompt of a batch: the template's text
    before the image and the first m visual tokens, positions 0 .. P + m - 1 in every row
    (no padding). An answer at a larger m from the same MQT output can continue from it
    instead of reading those tokens again: the MQT's first m outputs are the same at any
    larger m (its queries attend causally) and so are the prompt's tokens up to there."""

    m: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values): (B, kv heads, P + m, d)

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2]

    @classmethod
    def stack(cls, prefixes: Sequence[PromptPrefix]) -> PromptPrefix:
        """One batch from the rows of several prefixes at the same m (in that order)."""
        if len({p.m for p in prefixes}) != 1 or len({p.length for p in prefixes}) != 1:
            raise ValueError("prefixes to stack must be at the same m and length")
        layers = zip(*(p.layers for p in prefixes), strict=True)
        return cls(prefixes[0].m, [(torch.cat([k for k, _ in per]), torch.cat([v for _, v in per]))
                                   for per in layers])

    def rows(self, idx: Sequence[int]) -> PromptPrefix:
        ix = torch.as_tensor(list(idx), dtype=torch.long, device=self.layers[0][0].device)
        return PromptPrefix(self.m, [(k[ix], v[ix]) for k, v in self.layers])

    def cache(self):
        """A fresh transformers cache holding a copy of the prefix (the LM appends to it)."""
        # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.clone(), v.clone(), i)
        return cache


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig, vision: nn.Module, query: QueryTransformer,
                 lm: nn.Module, tokenizer):
        super().__init__()
        self.cfg, self.vision, self.query, self.lm = cfg, vision, query, lm
        self.tokenizer = tokenizer
        self.template = get_template(cfg.template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def num_queries(self) -> int:
        return self.query.num_queries

    def preprocess(self, images) -> torch.Tensor:
        return preprocess(images, self.vision)

    def encode_images(self, pixel_values: torch.Tensor, num_visual_tokens: int) -> torch.Tensor:
        """(B, 3, S, S) -> (B, m, H_lm) visual tokens."""
        return self.encode_features(self.vision(pixel_values), num_visual_tokens)

    def encode_features(self, grid_features: torch.Tensor, num_visual_tokens: int) -> torch.Tensor:
        """(B, N, D) grid features (e.g. cached: the vision encoder is frozen) -> (B, m, H_lm)."""
        return self.query(grid_features, num_visual_tokens, self.vision.grid_hw)

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image tokens replaced by `image_embeds` (B, m, H)."""
        mask = input_ids == self.image_token_id  # (B, T)
        per_row = mask.sum(dim=1)
        if image_embeds.shape[:2] != (input_ids.shape[0], image_embeds.shape[1]) or bool(
            (per_row != image_embeds.shape[1]).any()
        ):
            raise ValueError(f"image tokens per row {per_row.tolist()} do not match "
                             f"image_embeds of shape {tuple(image_embeds.shape)}")
        # the image token id may lie outside the LM's vocabulary: embed a valid id instead
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                num_visual_tokens: int, pixel_values: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                grid_features: torch.Tensor | None = None):
        """LM output (logits, and loss when labels are given) with m visual tokens per row.

        The image comes as pixel_values, grid_features (B, N, D) or image_embeds (B, >=m, H).
        """
        m = check_num_tokens(num_visual_tokens, self.num_queries)
        if image_embeds is None and grid_features is not None:
            image_embeds = self.encode_features(grid_features, m)
        elif image_embeds is None:
            image_embeds = self.encode_images(pixel_values, m)
        embeds = self.embed(input_ids, image_embeds[:, :m])
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)

    def format_prompts(self, questions: Sequence[str]) -> list[str]:
        return [self.template.format(q) for q in questions]

    @functools.cached_property
    def prefix_text_tokens(self) -> int:
        """Tokens of the prompt before its image: the same for every question and m."""
        return prefix_text_tokens(self.cfg, self.tokenizer)

    def prompt_text_tokens(self, question: str) -> int:
        """T of the cost model: the tokens of the question's prompt besides its m image
        tokens (the same at every m)."""
        return len(encode_prompt(self.tokenizer, self.format_prompts([question])[0], 1)) - 1

    @torch.no_grad()
    def generate(self, questions: Sequence[str], num_visual_tokens: int | Sequence[int],
                 images=None, pixel_values: torch.Tensor | None = None,
                 image_embeds: torch.Tensor | None = None,
                 grid_features: torch.Tensor | None = None,
                 max_new_tokens: int = 16) -> list[Generation]:
        """Greedy answers, one per question; the image as images, pixel_values, grid_features
        or (B, >= max m, H) image_embeds."""
        n = len(questions)
        ms = [num_visual_tokens] * n if isinstance(num_visual_tokens, int) else list(
            num_visual_tokens)
        if len(ms) != n:
            raise ValueError(f"{len(ms)} values of num_visual_tokens for {n} questions")
        ms = [check_num_tokens(m, self.num_queries) for m in ms]
        if image_embeds is None and grid_features is not None:
            image_embeds = self.encode_features(grid_features, max(ms))
        elif image_embeds is None:
            pv = pixel_values if pixel_values is not None else self.preprocess(images)
            image_embeds = self.encode_images(pv, max(ms))  # once, at the largest m needed
        prompts = self.format_prompts(questions)
        out: list[Generation | None] = [None] * n
        for m in sorted(set(ms)):
            rows = [i for i in range(n) if ms[i] == m]
            for i, gen in zip(rows, self._generate_group(
                    [prompts[i] for i in rows], image_embeds[rows, :m], max_new_tokens)[0],
                    strict=True):
                out[i] = gen
        return out

    @torch.no_grad()
    def generate_cached(self, questions: Sequence[str], m: int, image_embeds: torch.Tensor,
                        max_new_tokens: int = 16, prefix: PromptPrefix | None = None,
                        keep_prefix: bool = False, on_step: Callable | None = None
                        ) -> tuple[list[Generation], PromptPrefix | None]:
        """Greedy answers at m over (B, >= m, H) image embeddings. With `prefix` (an earlier
        pass's, at a smaller m, over the same rows and embeddings) the LM reads only what
        follows it; with `keep_prefix` (and no `prefix`) also returns the prompt prefix at
        m, for a later answer at a larger m. `on_step(tokens)`, if given, is called with
        each step's new token of every row (a list of B ids, as they are made: streaming;
        a row past its stop token gets the pad token)."""
        m = check_num_tokens(m, self.num_queries)
        prompts = self.format_prompts(questions)
        if prefix is None:
            return self._generate_group(prompts, image_embeds[:, :m], max_new_tokens,
                                        keep_prefix, on_step)
        out, mask = self._continue(prompts, image_embeds, m, prefix)
        return self._greedy(out, mask, m, max_new_tokens, on_step), None

    def _greedy(self, out, mask: torch.Tensor, m: int, max_new_tokens: int,
                on_step: Callable | None = None) -> list[Generation]:
        """Greedy decoding from a prefilled LM output (as `generate` with do_sample=False):
        up to `max_new_tokens` tokens, a row ending at its first stop token."""
        stop_ids = self.stop_token_ids()
        stops = torch.tensor(stop_ids, device=mask.device)
        cache, pos = out.past_key_values, mask.sum(1, keepdim=True)  # next positions
        text_len = (pos[:, 0] - m).tolist()  # the prompt's tokens besides its visual ones
        tokens, logps = [], []
        done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        logits = out.logits[:, -1]
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok = logp.argmax(-1)
            if on_step is not None:  # rows already done get the pad token, as generate does
                pad = self.tokenizer.pad_token_id
                on_step(torch.where(done, pad if pad is not None else tok, tok).tolist())
            tokens.append(tok)
            logps.append(logp.gather(1, tok[:, None])[:, 0])
            done |= torch.isin(tok, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            logits = self.lm(input_ids=tok[:, None], attention_mask=mask, position_ids=pos,
                             past_key_values=cache, use_cache=True).logits[:, -1]
            pos = pos + 1
        lp = torch.stack(logps, 1)
        return [self._generation(row, lambda i, b=b: lp[b, i], m, int(text_len[b]),
                                 set(stop_ids))
                for b, row in enumerate(torch.stack(tokens, 1).tolist())]

    def option_ids(self, option: str) -> list[int]:
        """The tokens an option is scored as: the option, then the template's end-of-turn
        marker, as every training answer ends. Its log-probability is then that of the
        whole answer: without the marker "red" would always beat "red circle" (each token
        more only lowers a sum) and an empty option would score 0, above any other."""
        return encode_answer(self.tokenizer, option + self.template.answer_suffix)

    def option_token_counts(self, options: Sequence[str]) -> list[int]:
        """Tokens of each option as scored: what `mqt.cost.scored_flops` prices."""
        return [len(self.option_ids(o)) for o in options]

    @torch.no_grad()
    def option_logprobs(self, questions: Sequence[str], options: Sequence[Sequence[str]],
                        num_visual_tokens: int, grid_features: torch.Tensor | None = None,
                        image_embeds: torch.Tensor | None = None,
                        pixel_values: torch.Tensor | None = None) -> list[list[float]]:
        """Summed log-probability of each option as the whole answer (its tokens and the
        end-of-turn marker, `option_ids`): multiple choice by likelihood.

        The prompt (m image tokens and the question) runs once per question; its last
        logits score every option's first token, and its KV cache is shared by the
        options, whose first k - 1 tokens (k >= 2 with the marker) run over it to score the
        rest (`mqt.cost.scored_flops` prices exactly this). The scores are those of a full
        forward of prompt + option + marker: the token sequence is the same.
        """
        m = check_num_tokens(num_visual_tokens, self.num_queries)
        if image_embeds is None:
            image_embeds = (self.encode_features(grid_features, m) if grid_features is not None
                            else self.encode_images(pixel_values, m))
        return self.option_logprobs_cached(questions, options, m, image_embeds)[0]

    @torch.no_grad()
    def option_logprobs_cached(self, questions: Sequence[str], options: Sequence[Sequence[str]],
                               m: int, image_embeds: torch.Tensor,
                               prefix: PromptPrefix | None = None, keep_prefix: bool = False
                               ) -> tuple[list[list[float]], PromptPrefix | None]:
        """`option_logprobs` at m over (B, >= m, H) image embeddings, continuing from
        `prefix` (an earlier pass's, at a smaller m, over the same rows and embeddings) when
        given; with `keep_prefix` (and no `prefix`) also the prompt prefix at m."""
        dev = image_embeds.device
        prompts = self.format_prompts(questions)
        kept = None
        if prefix is None:
            prompt = build_batch(self.tokenizer, prompts, m, padding_side="left")
            p_mask = prompt["attention_mask"].to(dev)
            p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)  # positions skip the left padding
            out = self.lm(inputs_embeds=self.embed(prompt["input_ids"].to(dev),
                                                   image_embeds[:, :m]),
                          attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                          logits_to_keep=1)
            if keep_prefix:
                kept = self._take_prefix(out.past_key_values, p_mask, m)
        else:
            out, p_mask = self._continue(prompts, image_embeds, m, prefix)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (Q, V): 1st option token
        owner = [i for i, opts in enumerate(options) for _ in opts]
        ids = [self.option_ids(o) for opts in options for o in opts]
        scores = [float(first[i, t[0]]) for i, t in zip(owner, ids, strict=True)]
        longer = [r for r, t in enumerate(ids) if len(t) > 1]
        if longer:
            tails = self._option_tails(out.past_key_values, p_mask, [owner[r] for r in longer],
                                       [ids[r] for r in longer])
            for r, tail in zip(longer, tails, strict=True):
                scores[r] += tail
        result, k = [], 0
        for opts in options:
            result.append(scores[k: k + len(opts)])
            k += len(opts)
        return result, kept

    def _take_prefix(self, cache, mask: torch.Tensor, m: int) -> PromptPrefix:
        """The prompt prefix at m (the first P + m real positions of each row) from the cache
        of a left-padded batch with attention mask `mask`."""
        length = self.prefix_text_tokens + m
        pad = mask.shape[1] - mask.sum(1)  # (B,) left padding per row
        pos = pad.to(torch.long).unsqueeze(1) + torch.arange(length, device=mask.device)
        layers = []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            ix = pos.to(k.device)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            layers.append((k.gather(2, ix), v.gather(2, ix)))
        return PromptPrefix(m, layers)

    def _continue(self, prompts: list[str], image_embeds: torch.Tensor, m: int,
                  prefix: PromptPrefix):
        """The LM over the prompts at m after `prefix` (positions 0 .. L - 1 cached): the
        m - prefix.m new visual tokens and the text after the image, left-padded between
        the prefix and them. Returns the LM output (last logits, the cache) and the
        attention mask over prefix + continuation."""
        if not prefix.m < m <= image_embeds.shape[1]:
            raise ValueError(f"a prefix at m={prefix.m} continues to a larger m, got m={m} "
                             f"(image embeddings of {image_embeds.shape[1]})")
        if prefix.length != self.prefix_text_tokens + prefix.m:
            raise ValueError(f"prefix of {prefix.length} positions: this template's prefix at "
                             f"m={prefix.m} has {self.prefix_text_tokens + prefix.m}")
        dev = image_embeds.device
        chunk = build_continuation(self.tokenizer, prompts, m, prefix.length)
        c_mask = chunk["attention_mask"].to(dev)
        mask = torch.cat([torch.ones(len(prompts), prefix.length, dtype=c_mask.dtype,
                                     device=dev), c_mask], 1)
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, prefix.length:]
        embeds = self.embed(chunk["input_ids"].to(dev), image_embeds[:, prefix.m:m])
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                      past_key_values=prefix.cache(), use_cache=True, logits_to_keep=1)
        return out, mask

    def _option_tails(self, cache, p_mask: torch.Tensor, owner: list[int],
                      ids: list[list[int]]) -> list[float]:
        """log p(tokens 2..k | prompt, token 1..) of each option (k >= 2) over its question's
        cached prompt: its first k - 1 tokens run in one right-padded pass."""
        dev, width = p_mask.device, max(len(t) for t in ids) - 1
        rows = torch.tensor(owner, device=dev)
        cache.batch_select_indices(rows)  # (R, ...): one copy of the prompt per option
        x = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        y, mask = torch.zeros_like(x), torch.zeros_like(x)
        for r, t in enumerate(ids):
            x[r, :len(t) - 1], y[r, :len(t) - 1] = torch.tensor(t[:-1]), torch.tensor(t[1:])
            mask[r, :len(t) - 1] = 1
        x, y, mask = x.to(dev), y.to(dev), mask.to(dev)
        pos = p_mask.sum(1)[rows].unsqueeze(1) + torch.arange(width, device=dev)  # (R, width)
        logits = self.lm(input_ids=x, attention_mask=torch.cat([p_mask[rows], mask], 1),
                         position_ids=pos, past_key_values=cache).logits  # (R, width, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # position j predicts token j + 2
        return (logp.gather(-1, y.unsqueeze(-1)).squeeze(-1) * mask).sum(1).tolist()

    def _generate_group(self, prompts: list[str], image_embeds: torch.Tensor,
                        max_new_tokens: int, keep_prefix: bool = False,
                        on_step: Callable | None = None
                        ) -> tuple[list[Generation], PromptPrefix | None]:
        m = image_embeds.shape[1]
        batch = build_batch(self.tokenizer, prompts, m, padding_side="left")
        embeds = self.embed(batch["input_ids"].to(image_embeds.device), image_embeds)
        out = self.lm.generate(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(embeds.device),
            max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
            return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids(),
            streamer=_StepStreamer(on_step) if on_step is not None else None,
        )
        text_len = batch["attention_mask"].sum(dim=1) - m
        kept = None
        if keep_prefix:
            kept = self._take_prefix(out.past_key_values,
                                     batch["attention_mask"].to(embeds.device), m)
        stops = set(self.stop_token_ids())
        return [self._decode(out, b, m, int(text_len[b]), stops)
                for b in range(len(prompts))], kept

    def _decode(self, out, b: int, m: int, prompt_tokens: int, stops: set[int]) -> Generation:
        ids = out.sequences[b].tolist()
        return self._generation(
            ids, lambda i: torch.log_softmax(out.scores[i][b].float(), -1)[ids[i]], m,
            prompt_tokens, stops)

    def _generation(self, ids: list[int], token_logp, m: int, prompt_tokens: int,
                    stops: set[int]) -> Generation:
        """The answer in generated `ids`: up to its first stop token (included); its
        confidence the mean of `token_logp(i)`, the log-probability of token i, over them."""
        n = next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))
        logps = [token_logp(i) for i in range(n)]
        mean = float(torch.stack(logps).mean()) if logps else 0.0
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
        return Generation(text, ids[:n], mean, m, prompt_tokens, n)

    def stop_token_ids(self) -> list[int]:
        """End of sequence, plus the template's end-of-turn marker when it is one token."""
        stops = {self.tokenizer.eos_token_id}
        suffix = self.tokenizer(self.template.answer_suffix, add_special_tokens=False)
        if len(suffix["input_ids"]) == 1:
            stops.add(suffix["input_ids"][0])
        return sorted(s for s in stops if s is not None)


class _StepStreamer:
    """transformers' streamer protocol (`put` per step, `end`) calling `on_step` with each
    step's token per row; the first `put` is the prompt, which is not passed on."""

    def __init__(self, on_step: Callable):
        self.on_step, self.prompt_seen = on_step, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def lm_folder(cfg: LMConfig) -> str:
    """The transformers folder of a pretrained LM; a bundled one is converted on first use."""
    if cfg.kind == "bundled":
        if cfg.path != FOLDER:
            raise ValueError(f"lm.path={cfg.path!r}: the bundled language model is {FOLDER!r}")
        return str(smollm2_path())
    if cfg.kind != "pretrained" or not cfg.path:
        raise ValueError(f"lm.kind={cfg.kind!r} with lm.path={cfg.path!r} names no folder")
    return cfg.path


def build_lm(cfg: LMConfig) -> nn.Module:
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.kind in ("pretrained", "bundled"):
        lm = AutoModelForCausalLM.from_pretrained(lm_folder(cfg), dtype=torch.float32)
        check_lm_dims(cfg, lm.config)
        return lm
    return LlamaForCausalLM(LlamaConfig(**llama_kwargs(cfg)))


def llama_kwargs(cfg: LMConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
    )


def check_lm_dims(cfg: LMConfig, hf) -> None:
    pairs = {"vocab_size": hf.vocab_size, "hidden_size": hf.hidden_size,
             "num_layers": hf.num_hidden_layers, "num_heads": hf.num_attention_heads,
             "intermediate_size": hf.intermediate_size,
             "num_kv_heads": getattr(hf, "num_key_value_heads", hf.num_attention_heads)}
    for name, value in pairs.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"lm.{name}={getattr(cfg, name)} but {cfg.path} has {value}")


def make_tokenizer(cfg: VLMConfig):
    """`byte`: built on the spot; `lm`: the pretrained LM's own; otherwise a folder."""
    if cfg.tokenizer == "byte":
        return byte_tokenizer()
    return load_tokenizer(lm_folder(cfg.lm) if cfg.tokenizer == "lm" else cfg.tokenizer)


def prefix_text_tokens(cfg: VLMConfig, tokenizer=None) -> int:
    """Tokens of the template's prompt before its image (what an escalation's cached prefix
    holds besides the m1 visual tokens); the config's tokenizer unless one is given."""
    tok = tokenizer if tokenizer is not None else make_tokenizer(cfg)
    ids = encode_prompt(tok, get_template(cfg.template).format(""), 1)
    return ids.index(tok.convert_tokens_to_ids(IMAGE_TOKEN))


def build_model(cfg: VLMConfig, seed: int = 0, tokenizer=None) -> VisionLanguageModel:
    """Build from a config; random parts are initialised from `seed` (global RNG untouched)."""
    cfg.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision = build_vision(cfg.vision)
        lm = build_lm(cfg.lm)
        query = QueryTransformer(cfg.query, vision.hidden_size, cfg.lm.hidden_size)
    if tokenizer is None:
        tokenizer = make_tokenizer(cfg)
    model = VisionLanguageModel(cfg, vision, query, lm, tokenizer)
    model.vision.requires_grad_(not cfg.vision.frozen)
    model.lm.requires_grad_(not cfg.lm.frozen)
    if cfg.lm.lora_rank:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            add_lora(model.lm, cfg.lm.lora_targets, cfg.lm.lora_rank, cfg.lm.lora_alpha)
    return model.eval()


def weight_bytes(cfg: VLMConfig, bytes_per_value: int = 4) -> int:
    """Bytes of the model's weights (float32 by default, as the engine loads them), counted
    without loading any: the vision encoder and the query transformer are built on the meta
    device, the LM's parameters follow from its dimensions (a Llama-shaped decoder, which
    `check_lm_dims` holds a pretrained LM to), LoRA adapters included."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # a pretrained encoder's weights load as no-ops
        vision = build_vision(cfg.vision)
        query = QueryTransformer(cfg.query, vision.hidden_size, cfg.lm.hidden_size)
    n = sum(p.numel() for m in (vision, query) for p in m.parameters())
    lm = cfg.lm
    kv = lm.head_dim * lm.num_kv_heads
    layer = (2 * lm.hidden_size * lm.hidden_size + 2 * lm.hidden_size * kv  # q, o; k, v
             + 3 * lm.hidden_size * lm.intermediate_size + 2 * lm.hidden_size)  # MLP, norms
    if lm.lora_rank:
        dims = {"q_proj": (lm.hidden_size, lm.hidden_size), "k_proj": (lm.hidden_size, kv),
                "v_proj": (lm.hidden_size, kv), "o_proj": (lm.hidden_size, lm.hidden_size),
                "gate_proj": (lm.hidden_size, lm.intermediate_size),
                "up_proj": (lm.hidden_size, lm.intermediate_size),
                "down_proj": (lm.intermediate_size, lm.hidden_size)}
        layer += sum(lm.lora_rank * sum(dims[t]) for t in lm.lora_targets if t in dims)
    embed = lm.vocab_size * lm.hidden_size
    n += lm.num_layers * layer + embed * (1 if lm.tie_embeddings else 2) + lm.hidden_size
    return n * bytes_per_value
