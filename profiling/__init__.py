"""slm.profiling: how fast a model prefills and decodes, how much memory its KV cache takes, what each
quantization bit-width buys, here, on a Jetson, over SSH, or projected.

api.py is the entry (`profile_model(model, out, ProfileArgs(...))`, used by `slm profile` and `slm demo`);
inputs.py says what MODEL is (exporting or quantizing with slm.quant when needed), run.py puts the parts
together (`profile`). Backends (llama.cpp — slm.quant's one context wrapper —, torch, onnxruntime-genai) share
one protocol (protocol.py); kv.py does KV-cache memory, roofline.py the host's bandwidth and compute,
devices.py the Jetson registry and projection, remote.py the SSH runner, sweep.py the quantization sweep,
report.py writes the HTML. Heavy libraries (llama_cpp, torch, onnxruntime_genai) are imported only by the
backend that needs them.
"""
