"""The chunked LM-head cross-entropy equals the plain one (value and gradients, ignored labels included,
summed over micro-batches); attention and loss choices are refused before any weights are read where they
cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.io import load_model
from slm.train.attention import AttnInputs, check_attn
from slm.train.loss import (
    LossHead,
    check_loss,
    chunked_cross_entropy,
    has_liger,
    install_loss_head,
    micro_loss,
)
from slm.train.pack import IGNORE, collate, label_window

from .conftest import VOCAB

CPU = torch.device("cpu")


def _labels(n: int, vocab: int, gen) -> torch.Tensor:
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.3] = IGNORE  # boundaries, padding, user turns
    return y


@pytest.mark.parametrize("chunk", [7, 64, 1000])  # a ragged last chunk, several chunks, one chunk
def test_chunked_cross_entropy_equals_plain(chunk):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(53, 16, generator=gen, requires_grad=True)
    w = torch.randn(97, 16, generator=gen, requires_grad=True)
    y = _labels(53, 97, gen)
    plain = F.cross_entropy((h @ w.t()).float(), y, ignore_index=IGNORE, reduction="sum")
    gh, gw = torch.autograd.grad(plain * 0.37, (h, w))  # a scale, as the loop's 1 / global token count
    ours = chunked_cross_entropy(h, w, y, chunk)
    ch, cw = torch.autograd.grad(ours * 0.37, (h, w))
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ch, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cw, gw, rtol=1e-5, atol=1e-6)


def test_frozen_head_gets_no_gradient_and_ignored_rows_none():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(20, 8, generator=gen, requires_grad=True)
    w = torch.randn(31, 8, generator=gen)  # frozen head (trainable=expanded)
    y = _labels(20, 31, gen)
    (gh,) = torch.autograd.grad(chunked_cross_entropy(h, w, y, 6), (h,))
    # no gradient from an ignored label
    assert torch.equal(gh[y == IGNORE], torch.zeros_like(gh[y == IGNORE]))
    assert gh[y != IGNORE].abs().sum(-1).min() > 0


def _batches(n: int, t: int, vocab: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        seqs = [label_window(rng.integers(0, vocab, t + 1), np.repeat([0, 1, 2], [9, t - 12, 4]), None)
                for _ in range(2)]
        out.append(collate(seqs))
    return out


def test_model_loss_and_gradients_match_plain_over_accumulation(tiny_lm):
    """Two micro-batches, each summed and divided by the global label count (the loop's per-token mean): the
    model with the LossHead gives the same loss and the same gradient on every parameter as logits +
    F.cross_entropy."""
    path = tiny_lm()
    batches = _batches(2, 30, 256)
    count = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
    attn = AttnInputs("sdpa", torch.float32)
    grads, losses = [], []
    for kind in ("plain", "chunked"):
        model = load_model(path, attn_implementation="sdpa")
        head = install_loss_head(model, kind)
        assert (head is None) == (kind == "plain")
        total = 0.0
        for b in batches:
            loss = micro_loss(model, head, b, CPU, attn, autocast=False)
            (loss / count).backward()
            total += float(loss.detach())
        losses.append(total / count)
        grads.append({n: p.grad for n, p in model.named_parameters()})
        assert "lm_head.weight" in dict(model.named_parameters())  # same names: checkpoints unchanged
        with torch.no_grad():  # labels unset: the head is the plain linear head again (evaluation)
            assert model(input_ids=batches[0]["input_ids"]).logits.shape[-1] == VOCAB
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_loss_head_keeps_tied_weights(tiny_lm):
    model = load_model(tiny_lm(tied=True))
    head = install_loss_head(model, "chunked")
    assert isinstance(model.lm_head, LossHead) and head.weight is model.model.embed_tokens.weight


@pytest.mark.skipif(not (torch.cuda.is_available() and has_liger()),
                    reason="liger-kernel needs CUDA and liger-kernel")
def test_liger_equals_plain_on_cuda():
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 1000, bias=False).cuda()
    h = torch.randn(300, 64, generator=gen).cuda().requires_grad_()
    y = _labels(300, 1000, gen).cuda()
    plain = F.cross_entropy(h @ lin.weight.t(), y, ignore_index=IGNORE, reduction="sum")
    gh, gw = torch.autograd.grad(plain, (h, lin.weight))
    head = LossHead(lin, "liger")
    head.labels = y
    ours = head(h)
    ch, cw = torch.autograd.grad(ours, (h, lin.weight))
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(ch, gh, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(cw, gw, rtol=1e-3, atol=1e-4)


def test_choices_that_cannot_run_here_are_refused(monkeypatch):
    from slm.train import attention

    cuda = torch.device("cuda")
    assert check_attn("auto", CPU) == "sdpa" and check_loss("auto", CPU) == "chunked"
    with pytest.raises(SlmError, match="attn=flex trains on CUDA only.*use attn=sdpa"):
        check_attn("flex", CPU)
    monkeypatch.setattr(attention, "has_flash", lambda: False)
    assert check_attn("auto", cuda) == "flex"
    monkeypatch.setattr(attention, "has_flex", lambda: False)
    with pytest.raises(SlmError, match=r"attn=flex needs torch.nn.attention.flex_attention .*upgrade torch"):
        check_attn("auto", cuda)
    with pytest.raises(SlmError, match="attn=flash needs flash-attn: `pip install flash-attn"):
        check_attn("flash", cuda)
    monkeypatch.setattr(attention, "has_flash", lambda: True)
    assert check_attn("auto", cuda) == "flash"
    with pytest.raises(SlmError, match="attn=flash runs on CUDA only"):
        check_attn("flash", CPU)
    with pytest.raises(SlmError, match="loss=liger runs on CUDA only|loss=liger needs liger-kernel"):
        check_loss("liger", CPU)


def test_flash_path_feeds_the_micro_batch_as_one_row():
    """flash-attn varlen in transformers isolates packed documents only for a single row: the loop flattens
    the micro-batch (each row starts at position 0, so rows stay separate documents)."""
    import numpy as np

    seen = {}

    class Stub(torch.nn.Module):
        def forward(self, input_ids, position_ids, **kw):
            seen.update(ids=input_ids.shape, pos=position_ids.clone(), kw=kw)
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 5, requires_grad=True)})()

    rows = [label_window(np.arange(9) % 5, np.repeat([0, 1], [4, 5]), None) for _ in range(2)]
    loss = micro_loss(Stub(), None, collate(rows), CPU, AttnInputs("flash", torch.float32), autocast=False)
    assert seen["ids"] == (1, 16) and seen["kw"] == {}  # no mask: varlen from position ids
    assert seen["pos"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3] * 2
    assert float(loss) == pytest.approx(np.log(5) * 2 * 7)  # uniform logits; 7 labelled tokens per row
