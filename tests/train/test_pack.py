"""Packing isolates documents; SFT loss only on assistant tokens."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from slm.io import load_model
from slm.train.data import tokenize_doc
from slm.train.pack import IGNORE, block_causal_mask, collate, label_window

from .conftest import write_chat


def _per_token_loss(model, seq: dict, mask: bool = True) -> torch.Tensor:
    b = collate([seq])
    kw = {"position_ids": b["position_ids"]}
    if mask:
        kw["attention_mask"] = block_causal_mask(b["segments"], torch.float32)
    logits = model(input_ids=b["input_ids"], **kw).logits[0]
    return F.cross_entropy(logits, b["labels"][0], ignore_index=IGNORE, reduction="none")


def _alone(doc: np.ndarray) -> dict:
    return label_window(doc, np.zeros(len(doc), np.int64), None)


def test_packed_documents_give_the_same_per_token_loss_as_alone(tiny_lm):
    for attn in ("sdpa", "eager"):
        model = load_model(tiny_lm(), attn_implementation=attn).eval()
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, 256, 23), rng.integers(0, 256, 17)
        packed = label_window(np.concatenate([a, b]), np.array([0] * 23 + [1] * 17), None)
        with torch.no_grad():
            lp = _per_token_loss(model, packed)
            la, lb = _per_token_loss(model, _alone(a)), _per_token_loss(model, _alone(b))
            unmasked = _per_token_loss(model, packed, mask=False)
        assert packed["labels"][22] == IGNORE  # the label crossing the boundary is masked
        assert packed["position_ids"][23] == 0  # positions restart at the second document
        assert lp[22] == 0
        # float tolerance, not bitwise: different shapes reorder the sums (design.md)
        torch.testing.assert_close(lp[:22], la[:22], rtol=0, atol=1e-5)
        torch.testing.assert_close(lp[23:], lb[:16], rtol=0, atol=1e-5)
        # the test can fail: without the block-diagonal mask the second document sees the first
        assert (unmasked[23:] - lb[:16]).abs().max() > 1e-3


def test_sft_loss_only_on_assistant_tokens(tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tiny_lm()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    import json

    convo = json.loads(write_chat(tmp_path / "c.jsonl", 2, 5).read_text().splitlines()[1])["messages"]
    ids, mask = tokenize_doc(convo and {"messages": convo}, tok)
    replies = [m["content"] + "<|im_end|>\n" for m in convo if m["role"] == "assistant"]
    # count: every assistant byte is one token, <|im_end|> one token
    assert sum(mask) == sum(len(r.replace("<|im_end|>", "").encode()) + 1 for r in replies)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(replies)

    seq = label_window(np.asarray(ids), np.zeros(len(ids), np.int64), np.asarray(mask, np.uint8))
    labelled = seq["labels"] != IGNORE
    assert int(labelled.sum()) == sum(mask[1:])
    # gradient probe: d loss / d logits is non-zero exactly at positions whose next token is the assistant's
    model = load_model(model_dir)
    b = collate([seq])
    logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                   attention_mask=block_causal_mask(b["segments"], torch.float32)).logits
    logits.retain_grad()
    F.cross_entropy(logits[0], b["labels"][0], ignore_index=IGNORE, reduction="sum").backward()
    has_grad = logits.grad[0].abs().sum(-1) > 0
    assert torch.equal(has_grad, labelled)
    assert 0 < int(labelled.sum()) < len(ids) - 1
