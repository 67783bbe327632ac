"""Fixtures for slm.train: a byte-level tokenizer with a chat template beside tiny models, tiny data sets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

VOCAB = 272  # 256 bytes + 3 special tokens, rounded up
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_byte_tokenizer(folder: Path) -> None:
    """A byte-level BPE without merges (every byte one token) plus chat special tokens, saved into
    `folder`."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))


def write_texts(folder: Path, n: int, seed: int, style: str) -> Path:
    """n small documents, one file each: 'code' (python-like) or 'prose' (English-like)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = ["the", "model", "learns", "a", "small", "river", "under", "green", "light", "and", "stone"]
    for i in range(n):
        if style == "code":
            body = "\n".join(f"def f{i}_{k}(x):\n    return x * {rng.randint(1, 9)} + {k}"
                             for k in range(rng.randint(2, 6)))
        else:
            body = " ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) + "."
        (folder / f"doc{i:03d}.txt").write_text(body + "\n")
    return folder


def write_chat(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            msgs = [{"role": "user", "content": f"what is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
            if i % 2:
                msgs += [{"role": "user", "content": "and times two?"},
                         {"role": "assistant", "content": f"{2 * (a + b)}"}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


@pytest.fixture
def tiny_lm(tiny):
    """Factory: a tiny llama checkpoint with the byte tokenizer (vocab 272)."""

    def _make(**kw) -> Path:
        path = tiny("llama", vocab_size=VOCAB, **kw)
        save_byte_tokenizer(path)
        return path

    return _make


@pytest.fixture
def tiny_expanded(tiny_lm, tmp_path):
    """A tiny 6-layer model expanded to 8 layers by slm expand (new layers recorded in config.json)."""
    from slm.surgery.expand import ExpandArgs, expand

    src = tiny_lm()
    out = tmp_path / "expanded"
    expand(src, out, ExpandArgs(groups=2, copies=1, parity=False))
    return out


@pytest.fixture
def tiny_data(tmp_path, tiny_lm):
    """Prepared data (code + prose text sources) with the byte tokenizer; returns (data dir, tokenizer
    dir)."""
    from slm.train.data import DataArgs, Source, prepare

    tok = tiny_lm(name="tok-model")
    code = write_texts(tmp_path / "src-code", 40, 1, "code")
    prose = write_texts(tmp_path / "src-prose", 40, 2, "prose")
    out = tmp_path / "data"
    prepare(DataArgs([Source("code", str(code), 1.5), Source("prose", str(prose), 1.0)], str(tok),
                     heldout=0.1, workers=1, progress=False), out)
    return out, tok


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning threads make
    in-process training tests many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
