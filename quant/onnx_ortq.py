"""onnxruntime's own weight-only int4 quantizer (`onnxruntime.quantization.matmul_nbits_quantizer`) applied to
the fp32 folder onnxruntime-genai's builder writes.

The builder's int4 path offers RTN and k-quant only; onnxruntime's `MatMulNBitsQuantizer` also has HQQ (Badri
& Shaji 2023, half-quadratic optimisation of scale and zero point, no data) and GPTQ (Frantar et al. 2022,
second-order error compensation from calibration activations). Both write the same `MatMulNBits` contrib op
the builder does.

Tied embeddings (SmolLM2, Llama-3.2-1B, …): the builder's fp32 graph reads the embedding table as
`Transpose(lm_head weight) → Gather`, so quantizing only the MatMuls would leave a full fp32 copy of the 49k ×
576 table behind. As the builder's own int4 graph does (builders/base.py `make_embedding_lookup`), the head is
quantized first — symmetric RTN int4, `DefaultWeightOnlyQuantConfig` — and the embedding then reads the same
packed blocks through `Reshape → GatherBlockQuantized` (which takes no float zero points, so HQQ's asymmetric
output could not be shared). The named algorithm then quantizes every remaining MatMul.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

HEAD = "/lm_head/MatMul"
ALGOS = ("rtn", "hqq", "gptq")
SIDE_FILES = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
              "special_tokens_map.json", "generation_config.json")


def _reader(model, windows: list[list[int]], head_size: int):
    """A CalibrationDataReader feeding each window once with an empty KV cache (the builder graph's
    inputs)."""
    # onnxruntime is optional: imported only when used
    from onnxruntime.quantization import CalibrationDataReader

    past = {}
    for i in model.graph.input:
        if i.name.startswith("past_key_values."):
            d = [x.dim_value for x in i.type.tensor_type.shape.dim]
            past[i.name] = np.zeros((1, d[1], 0, head_size), np.float32)  # dim 3 is symbolic in the graph

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = [{"input_ids": np.asarray([w], np.int64),
                           "attention_mask": np.ones((1, len(w)), np.int64), **past} for w in windows]
            self.it = iter(self.feeds)

        def get_next(self):
            return next(self.it, None)

        def __deepcopy__(self, memo):  # the quantizer deep-copies the reader once per pass: start afresh
            return Reader()

    return Reader()


def _quantize_head(model, block_size: int, accuracy_level: int | None):
    """Symmetric RTN int4 on the LM head only (every other MatMul excluded), then the tied embedding onto
    it."""
    # onnxruntime is optional: imported only when used
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != HEAD]
    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True,
                                       accuracy_level=accuracy_level)
    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                             nodes_to_exclude=others, algo_config=cfg)
    q.process()
    model = q.model.model
    _tie_embedding(model, block_size)
    return model


def _tie_embedding(model, block_size: int) -> None:
    """Transpose(W) → Gather becomes Reshape(W_Q4) → GatherBlockQuantized when W is the quantized head's
    weight."""
    from onnx import helper, numpy_helper  # onnx is optional: imported only when used

    g = model.graph
    head = next((n for n in g.node if n.op_type == "MatMulNBits" and n.name.startswith(HEAD)), None)
    if head is None:
        return
    qweight, scales = head.input[1], head.input[2]
    zp = head.input[3] if len(head.input) > 3 else ""
    src = qweight[:-len("_Q4")] if qweight.endswith("_Q4") else None
    tr = next((n for n in g.node if n.op_type == "Transpose" and n.input[0] == src), None)
    if tr is None:  # untied model: the embedding has its own table
        return
    gather = next(n for n in g.node if n.op_type == "Gather" and n.input[0] == tr.output[0])
    dims = next(list(i.dims) for i in g.initializer if i.name == qweight)  # [N, k_blocks, blob bytes]
    shape = numpy_helper.from_array(np.asarray([dims[0], dims[1] * dims[2]], np.int64), f"{tr.name}/shape")
    g.initializer.append(shape)
    packed = f"{tr.name}/Reshape/output_0"
    reshape = helper.make_node("Reshape", [qweight, shape.name], [packed], name=f"{tr.name}/Reshape")
    gbq = helper.make_node("GatherBlockQuantized", [packed, gather.input[1], scales] + ([zp] if zp else []),
                           list(gather.output), name=gather.name + "BlockQuantized", domain="com.microsoft",
                           bits=4, block_size=block_size, gather_axis=0, quantize_axis=1)
    nodes = [reshape if n is tr else gbq if n is gather else n for n in g.node]
    g.ClearField("node")
    g.node.extend(nodes)
    still_used = any(src in n.input for n in g.node)
    if not still_used:
        keep = [i for i in g.initializer if i.name != src]
        g.ClearField("initializer")
        g.initializer.extend(keep)


def _body_config(algo: str, block_size: int, symmetric: bool, accuracy_level, windows, model, head_size: int):
    # onnxruntime is optional: imported only when used
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if algo == "rtn":
        return nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                              accuracy_level=accuracy_level)
    if algo == "hqq":  # asymmetric by construction (float zero point per block)
        return nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=4)
    # GPTQ: block_size here is GPTQ's column batch (its paper's B = 128); the group size is the quantizer's
    return nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=_reader(model, windows, head_size),
                                       percdamp=0.01, block_size=128, actorder=False, mse=False,
                                       perchannel=True)


def integer_zero_points(model, fp32_weights: dict, accuracy_level: int | None) -> int:
    """MatMulNBits nodes with float zero points (HQQ's) → uint8 zero points, weights re-quantized; returns
    how many nodes changed.

    Why: onnxruntime's CPU MatMulNBits runs its int4 kernels (MLAS SQNBit) only for uint8 packed zero
    points; a float zero point sends every call through dequantising the whole weight to fp32 first
    (measured on SmolLM2-135M: 10-15× slower decode). HQQ's scale is kept, its zero point rounded to the
    nearest of 0…15 (HQQ starts from that integer; Badri & Shaji 2023, `round_zero`) and the weights
    re-quantized against it, W_q = clip(round(W / s + z), 0, 15). The HQQ quantizer also writes no
    accuracy_level, so its nodes get the one asked for here. Hand-written: onnxruntime has no such option.
    """
    from onnx import helper, numpy_helper  # onnx is optional: imported only when used

    inits = {i.name: i for i in model.graph.initializer}
    changed = 0
    for n in model.graph.node:
        if n.op_type != "MatMulNBits" or len(n.input) < 4 or not n.input[3]:
            continue
        zp = numpy_helper.to_array(inits[n.input[3]])
        if zp.dtype == np.uint8:
            continue
        at = {a.name: a.i for a in n.attribute}
        k, cols, bs = at["K"], at["N"], at["block_size"]
        scales = numpy_helper.to_array(inits[n.input[2]]).reshape(cols, -1).astype(np.float32)
        kb = scales.shape[1]
        w = np.zeros((cols, kb * bs), np.float32)
        w[:, :k] = fp32_weights[n.input[1][:-len("_Q4")]].T
        z = np.clip(np.round(zp.reshape(cols, kb)), 0, 15)
        q = np.clip(np.round(w.reshape(cols, kb, bs) / scales[..., None] + z[..., None]), 0, 15)
        q = q.astype(np.uint8)
        zi = np.concatenate([z.astype(np.uint8), np.zeros((cols, kb % 2), np.uint8)], axis=1)
        # MatMulNBits' layout: two 4-bit values per byte, the first in the low nibble; zero points per
        # column padded to whole bytes
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(q[..., 0::2] | (q[..., 1::2] << 4), n.input[1]))
        inits[n.input[3]].CopyFrom(numpy_helper.from_array((zi[:, 0::2] | (zi[:, 1::2] << 4)).reshape(-1),
                                                           n.input[3]))
        if accuracy_level:
            keep = [a for a in n.attribute if a.name != "accuracy_level"]
            n.ClearField("attribute")
            n.attribute.extend(keep + [helper.make_attribute("accuracy_level", accuracy_level)])
        changed += 1
    return changed


def quantize_folder(fp32_dir: Path, out_dir: Path, algo: str, block_size: int = 32, symmetric: bool = False,
                    accuracy_level: int | None = 4, calibration: list[list[int]] | None = None,
                    uint8_zero_points: bool = False) -> Path:
    """fp32 builder folder → int4 folder by `algo` (rtn | hqq | gptq); calibration windows of token ids for
    gptq; `uint8_zero_points`: HQQ's float zero points made integer (integer_zero_points)."""
    # onnx and onnxruntime are optional: imported only when used
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(fp32_dir / "model.onnx"))
    model = _quantize_head(model, block_size, accuracy_level)
    head_size = json.loads((fp32_dir / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    cfg = _body_config(algo, block_size, symmetric, accuracy_level, calibration or [], model, head_size)
    q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=symmetric,
                             accuracy_level=accuracy_level, algo_config=cfg)
    q.process()
    if uint8_zero_points:
        from onnx import numpy_helper  # onnx is optional: imported only when used

        src = onnx.load(str(fp32_dir / "model.onnx"))
        weights = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer if len(i.dims) == 2}
        integer_zero_points(q.model.model, weights, accuracy_level)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx.data").unlink(missing_ok=True)  # onnx appends external data to an existing file
    onnx.save_model(q.model.model, str(out_dir / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    for f in SIDE_FILES:
        if (fp32_dir / f).is_file():
            shutil.copy2(fp32_dir / f, out_dir / f)
    return out_dir
