"""Packing isolates documents; SFT loss only on assistant tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slm.io import load_model
from slm.train.attention import HF_NAME, AttnInputs, has_flash, has_flex
from slm.train.data import tokenize_doc
from slm.train.pack import IGNORE, block_causal_mask, collate, label_window

from .conftest import write_chat


def _per_token_loss(model, seq: dict, attn: str = "sdpa", mask: bool = True) -> torch.Tensor:
    """Per-token loss of one sequence, its documents isolated as training isolates them on path `attn`."""
    b = collate([seq])
    kw = {"position_ids": b["position_ids"],
          **(AttnInputs(attn, torch.float32)(b["segments"]) if mask else {})}
    logits = model(input_ids=b["input_ids"], **kw).logits[0]
    return F.cross_entropy(logits, b["labels"][0], ignore_index=IGNORE, reduction="none")


def _alone(doc: np.ndarray) -> dict:
    return label_window(doc, np.zeros(len(doc), np.int64), None)


def _paths() -> list:
    """Every attention path, skipped with the reason where this machine cannot run it (forward only: the test
    runs under no_grad, which is what FlexAttention supports on CPU)."""
    cuda = torch.cuda.is_available()
    return ["sdpa", "eager",
            pytest.param("flex",
                         marks=pytest.mark.skipif(not has_flex(), reason="torch without flex_attention")),
            pytest.param("flash",
                         marks=pytest.mark.skipif(not (cuda and has_flash()),
                                                  reason="flash-attn needs CUDA and the flash-attn package"))]


@pytest.mark.parametrize("attn", _paths())
def test_packed_documents_give_the_same_per_token_loss_as_alone(tiny_lm, attn):
    dtype = torch.bfloat16 if attn == "flash" else torch.float32  # flash-attn has no fp32 kernels
    device = "cuda" if attn == "flash" else "cpu"
    model = load_model(tiny_lm(), attn_implementation=HF_NAME[attn]).to(device, dtype).eval()
    # same seed, same weights
    ref = load_model(tiny_lm(), attn_implementation="sdpa").to(device, dtype).eval()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, 23), rng.integers(0, 256, 17)
    packed = label_window(np.concatenate([a, b]), np.array([0] * 23 + [1] * 17), None)
    packed, alone_a, alone_b = ({k: v.to(device) for k, v in s.items()}
                                for s in (packed, _alone(a), _alone(b)))
    with torch.no_grad():
        lp = _per_token_loss(model, packed, attn)
        la, lb = _per_token_loss(model, alone_a, attn), _per_token_loss(model, alone_b, attn)
        unmasked = _per_token_loss(ref, packed, mask=False)
    assert packed["labels"][22] == IGNORE  # the label crossing the boundary is masked
    assert packed["position_ids"][23] == 0  # positions restart at the second document
    assert lp[22] == 0
    # float tolerance, not bitwise: different shapes reorder the sums
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(lp[:22], la[:22], rtol=0, atol=tol)
    torch.testing.assert_close(lp[23:], lb[:16], rtol=0, atol=tol)
    # the test can fail: without the document mask the second document sees the first
    assert (unmasked[23:] - lb[:16]).abs().max() > 1e-3


def test_flex_block_mask_is_built_once_per_packing():
    if not has_flex():
        pytest.skip("torch without flex_attention")
    inputs = AttnInputs("flex", torch.float32)
    seg = torch.tensor([[0] * 5 + [1] * 3, [0] * 8])
    first = inputs(seg)["attention_mask"]
    assert inputs(seg.clone())["attention_mask"] is first and inputs.built == 1  # same packing: cached
    other = inputs(torch.tensor([[0] * 2 + [1] * 6, [0] * 8]))["attention_mask"]
    assert inputs.built == 2 and other is not first
    # the mask is the document-causal one: it agrees with the dense reference mask everywhere
    dense = block_causal_mask(seg, torch.float32) == 0
    assert torch.equal(_mask_of(first, 8), dense)


def _mask_of(block_mask, t: int) -> torch.Tensor:
    """The element-wise B×1×T×T boolean mask a BlockMask stands for (its mask_mod at every position)."""
    b = torch.arange(block_mask.shape[0])[:, None, None, None]
    q, k = torch.arange(t)[None, None, :, None], torch.arange(t)[None, None, None, :]
    return block_mask.mask_mod(b, torch.zeros(1, 1, 1, 1, dtype=torch.long), q, k)


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


@pytest.mark.skipif(not (torch.cuda.is_available() and has_flex()),
                    reason="FlexAttention's backward needs CUDA")
def test_flex_trains_like_sdpa_on_cuda(tiny_lm):
    """Forward and backward through FlexAttention with the document BlockMask = sdpa with the dense mask."""
    from slm.train.loss import install_loss_head, micro_loss

    rng = np.random.default_rng(1)
    seqs = [label_window(rng.integers(0, 256, 97), np.repeat([0, 1, 2], [40, 30, 27]), None)
            for _ in range(2)]
    batch, dev, out = collate(seqs), torch.device("cuda"), {}
    for attn in ("sdpa", "flex"):
        model = load_model(tiny_lm(), attn_implementation=HF_NAME[attn]).to(dev)
        head = install_loss_head(model, "chunked")
        loss = micro_loss(model, head, batch, dev, AttnInputs(attn, torch.float32), autocast=False)
        loss.backward()
        out[attn] = (float(loss), {n: p.grad for n, p in model.named_parameters()})
    assert out["flex"][0] == pytest.approx(out["sdpa"][0], rel=1e-4)
    for n, g in out["sdpa"][1].items():
        torch.testing.assert_close(out["flex"][1][n], g, rtol=1e-3, atol=1e-4, msg=n)
