"""slm.quant — export an HF checkpoint to GGUF (every llama.cpp quant type) and ONNX, validated against it.

export.py is the entry (`export(model_dir, out, ExportArgs(...))`); gguf_arch.py decides what of a config
llama.cpp runs (architecture, RoPE scaling, NoPE, sliding window); gguf_write.py writes F32/F16/BF16 GGUFs,
imatrix.py the importance matrix, onnx_export.py the ONNX folders. The one room that drives llama.cpp:
llamacpp.py (library loading, log capture, the context wrapper the profiler and validation both use),
quantize.py (the one quantizer and what a quantized file holds). runtimes.py opens each runtime (HF,
llama.cpp, onnxruntime-genai) for logits and greedy tokens; validate.py validates an export with them and the
one scorer, slm.score; the GGUF format itself is slm.gguf.
"""
