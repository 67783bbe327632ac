"""The one scorer: which tokens each mode scores, perplexity and KLD on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from slm.errors import SlmError
from slm.score import Scoring, kld, log_softmax, perplexity, score


def test_windows_per_mode():
    ids = list(range(40))
    assert Scoring("all", 16).windows(ids) == [ids[0:16], ids[16:32], ids[32:40]]
    # a 1-token tail has nothing to score
    assert Scoring("all", 16).windows(ids[:33]) == [ids[0:16], ids[16:32]]
    assert Scoring("second_half", 16, chunks=2).windows(ids) == [ids[0:16], ids[16:32]]
    with pytest.raises(SlmError, match="fewer than 16×3"):
        Scoring("second_half", 16, chunks=3).windows(ids)
    with pytest.raises(SlmError, match="unknown scoring mode 'half'"):
        Scoring("half")
    assert "second half" in Scoring("second_half", 256, 4).what and "every token" in Scoring().what


def _uniform(vocab: int):
    return lambda w: np.zeros((len(w), vocab), np.float32)


def test_uniform_model_has_perplexity_vocab():
    ids = list(np.random.default_rng(0).integers(0, 50, 64))
    for sc, n in ((Scoring("all", 16), 4 * 15), (Scoring("second_half", 16, 4), 4 * 8)):
        r = perplexity(score(_uniform(50), ids, sc), sc)
        assert r["perplexity"] == pytest.approx(50) and r["tokens_scored"] == n and r["mode"] == sc.mode


def test_kld_is_zero_against_itself_and_grows_with_damage():
    rng = np.random.default_rng(0)
    ids = list(rng.integers(0, 32, 64))
    table = rng.normal(size=(64, 32)).astype(np.float32)

    def model(noise):
        return lambda w: table[: len(w)] + noise * rng.normal(size=(len(w), 32)).astype(np.float32)

    for sc in (Scoring("all", 16), Scoring("second_half", 16, 4)):
        ref = score(model(0), ids, sc)
        same = kld(ref, ref, sc)
        assert same["kld_mean"] == 0 and same["top1_agree"] == 1 and same["mode"] == sc.mode
        small, big = kld(ref, score(model(0.1), ids, sc), sc), kld(ref, score(model(1.0), ids, sc), sc)
        assert 0 < small["kld_mean"] < big["kld_mean"] and small["kld_mean"] <= small["kld_max"]
    # `all` compares every position of a window, `second_half` the scored half
    assert kld(ref, ref, sc)["positions"] == 4 * 8
    assert kld(*(2 * [score(model(0), ids, Scoring("all", 16))]), Scoring("all", 16))["positions"] == 64


def test_log_softmax_sums_to_one():
    x = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], np.float32)
    assert np.exp(log_softmax(x)).sum(-1) == pytest.approx([1, 1])
