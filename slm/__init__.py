"""slm-lab: grow, specialise, export and profile small Llama-family language models for edge devices.

slm/ is the core (model specs, I/O, surgery, reports). It never imports slm.train, slm.quant or
slm.profiling; only the CLI (slm/cli/) dispatches to them.
"""

__version__ = "0.1.0"
