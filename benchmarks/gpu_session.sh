#!/usr/bin/env bash
# Issue 10's GPU table (benchmarks/bench_train.py --gpu) in one device call.
#
#   here, once:      bash benchmarks/gpu_session.sh prep      # wheels the device image lacks + a SmolLM2 tokenizer → .whl/
#   on the device:   bash benchmarks/gpu_session.sh run       # device tool: carry [".whl"], timeout_s 600
#
# One call does not fit all rows in 10 minutes: run two, back to back (the machine stays warm ~30 s, and /tmp/bench
# keeps the data and models between them; a fresh machine just rebuilds them):
#   ONLY=reference,ours,ours-chunked,fsdp-1-rank bash benchmarks/gpu_session.sh run
#   ONLY=x33-full,x33-expanded,3b-full bash benchmarks/gpu_session.sh run
#
# The device image has torch, transformers, peft, triton but not gguf (slm.spec reads GGUF shapes) or liger-kernel;
# flash-attn is an sdist that compiles against CUDA for a long time, so it is left out (attn=auto then means flex).
# Rows run one per process; --row-timeout keeps one stuck row from eating the call.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
prep)
  mkdir -p .whl/tok
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl gguf==0.19.0 liger-kernel==0.8.5
  tok="${TOKENIZER:-/tmp/smol-x36}"  # any SmolLM2 tokenizer folder (slm import --default writes one)
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" .whl/tok/
  ls -la .whl .whl/tok
  ;;
run)
  export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
  if [ ! -e /tmp/site/slm ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . >/dev/null
  fi
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  # the CUDA tests (liger's; flash skips without flash-attn) before the benchmark, once per machine
  [ -e /tmp/bench/.tested ] || { python3 -m pytest -q -x -p no:cacheprovider tests/train/test_loss.py tests/train/test_pack.py -k "cuda or liger" 2>&1 | tail -3;
                                 mkdir -p /tmp/bench && touch /tmp/bench/.tested; }
  python3 benchmarks/bench_train.py --gpu --tokenizer .whl/tok --work /tmp/bench --steps 6 --row-timeout 240 \
    ${ONLY:+--only "$ONLY"} 2>&1 | tee "${OUT:-/tmp}/bench_train_gpu.log"
  ;;
esac
