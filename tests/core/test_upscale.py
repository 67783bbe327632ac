import json

import pytest
import torch

from slm.errors import SlmError
from slm.io import TensorReader
from slm.surgery.upscale import UpscaleArgs, upscale


def test_dus_layers_come_from_the_right_sources(tiny, tmp_path):
    src = tiny("llama", tied=True)
    out = tmp_path / "dus"
    res = upscale(src, out, UpscaleArgs(drop=2))
    expected = [0, 1, 2, 3, 2, 3, 4, 5]  # n=6, m=2 → 2(n−m) = 8
    assert res["record"]["source_layers"] == expected
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 8
    a, b = TensorReader(src), TensorReader(out)
    for k in b.keys():  # tensor by tensor
        if k.startswith("model.layers."):
            j, rest = int(k.split(".")[2]), k.split(".", 3)[3]
            assert torch.equal(b.get(k), a.get(f"model.layers.{expected[j]}.{rest}")), k
        else:
            assert torch.equal(b.get(k), a.get(k))
    assert res["record"]["new_layers"] == [4, 5]  # second appearances


def test_slices(tiny, tmp_path):
    src = tiny("qwen3")
    res = upscale(src, tmp_path / "s", UpscaleArgs(slices="0:4,2:6"))
    assert res["record"]["source_layers"] == [0, 1, 2, 3, 2, 3, 4, 5]


@pytest.mark.parametrize("args,msg", [(dict(drop=6), "smaller than"), (dict(slices="0:9"), "outside"),
                                      (dict(slices="a-b"), "bad slice"), (dict(), "exactly one")])
def test_bad_input(tiny, tmp_path, args, msg):
    src = tiny("llama")
    with pytest.raises(SlmError, match=msg):
        upscale(src, tmp_path / "o", UpscaleArgs(**args))
    assert not (tmp_path / "o").exists()
