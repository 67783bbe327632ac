"""slm.quant — export an HF checkpoint to GGUF (every llama.cpp quant type) and ONNX, validated against it."""
