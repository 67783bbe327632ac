"""The planner's compute-buffer estimate (profiling/plan.py compute_bytes) against what llama.cpp itself
allocates for the same shape and context, with flash attention on and off (memory at the context must hold
up)."""

from __future__ import annotations

import pytest

from slm.profiling.plan import compute_bytes
from slm.quant.gguf_write import write_gguf
from slm.quant.llamacpp import LlamaCpp
from slm.spec import load_spec
from tests.conftest import make_tiny

TOLERANCE = 0.05  # compute_bytes' docstring: −4.2 % … +1.7 % measured over these shapes and contexts
SHAPES = {  # two shapes whose buffers are dominated by different stages: the logits (a) or the attention (b)
    "vocab32k": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2,
                     num_hidden_layers=2, vocab_size=32000, max_position_embeddings=8192),
    "vocab8k": dict(hidden_size=512, intermediate_size=1408, num_attention_heads=16, num_key_value_heads=4,
                    num_hidden_layers=2, vocab_size=8000, max_position_embeddings=8192),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape_gguf(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    model = make_tiny(d / "hf", "llama", **SHAPES[request.param])
    write_gguf(model, d / "m.gguf", "f16")
    return d / "m.gguf"


def _check(gguf, context: int, flash_attn: bool) -> float:
    llama = LlamaCpp(gguf, context, 1, flash_attn=flash_attn)
    try:
        measured = llama.mem["compute"]
    finally:
        llama.close()
    assert measured > 0, ("llama.cpp logged no compute buffer: the log format changed "
                          "(quant/llamacpp.py _RE_BUF)")
    return compute_bytes(load_spec(gguf), context, flash_attn) / measured - 1


@pytest.mark.parametrize("flash_attn", [True, False])
@pytest.mark.parametrize("context", [512, 2048, 8192])
def test_estimate_matches_llama_cpp(shape_gguf, context, flash_attn):
    err = _check(shape_gguf, context, flash_attn)
    assert abs(err) <= TOLERANCE, f"estimate off by {err:+.1%}"


@pytest.mark.slow
@pytest.mark.parametrize("flash_attn", [True, False])
def test_estimate_on_the_bundled_model(flash_attn):
    """SmolLM2-135M at 8192: logits (vocab 49k) dominate with flash attention, the 9-head scores without."""
    from slm.gguf_import import default_gguf

    assert abs(_check(default_gguf(), 8192, flash_attn)) <= TOLERANCE
