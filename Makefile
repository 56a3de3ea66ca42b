# ortserve: `make serve` runs the server with two example models; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8001
METRICS_PORT ?= 8002
DATA_DIR ?= ./ortserve-data

.PHONY: serve test install lint typecheck protos protos-check buf-lint buf-breaking pytest clients-toolchains triton-venv bench soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -e ".[cpu]" --group dev
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ortserve serve --examples --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT) --data-dir $(DATA_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

protos-check: $(STAMP)
	$(PY) scripts/gen_protos.py --check

buf-lint: $(STAMP)
	$(VENV)/bin/buf lint

buf-breaking: $(STAMP)
	bash scripts/buf_breaking.sh

triton-venv:
	bash scripts/triton_venv.sh

clients-toolchains:
	bash scripts/install_client_toolchains.sh

pytest: $(STAMP) triton-venv clients-toolchains
	$(VENV)/bin/pytest

test: lint typecheck protos-check buf-lint buf-breaking pytest

# docker/: hadolint on both Dockerfiles, docker-compose config on compose.yaml (no container engine).
.PHONY: docker-check
test: docker-check
docker-check: $(STAMP)
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.gpu
	bash docker/compose_check.sh

# The tests again on the other Pythons that requires-python admits (3.12, 3.13), each in its own venv.
.PHONY: test-pythons
test: test-pythons
test-pythons:
	bash scripts/other_pythons.sh

bench: $(STAMP)
	$(PY) bench/run_all.py
	$(PY) bench/toolkit.py

# The toolkit's figures alone: int8 dynamic, int8 static and fp16 against fp32 (mlp, cnn), the load cache.
.PHONY: bench-toolkit
bench-toolkit: $(STAMP)
	$(PY) bench/toolkit.py

# The benchmark's peers (KServe's ModelServer, MLServer), each in its own venv; `make bench` installs
# them on first use (bench/run_all.py --targets), this only does it ahead of time.
.PHONY: peer-venvs
peer-venvs:
	bash scripts/peer_venvs.sh kserve
	bash scripts/peer_venvs.sh mlserver

# The GPU path on a machine with an NVIDIA GPU: its own venv with the gpu extra (onnxruntime-gpu; the
# dev group pulls no CPU onnxruntime, checked: both install the module `onnxruntime` and CUDA is lost),
# then the tests marked gpu (they skip, naming the reason, where CUDA is missing). bench/gpu.py: figures.
GPU_VENV ?= .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

$(GPU_STAMP): pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade "pip>=25.1"
	$(GPU_VENV)/bin/python -m pip install -q -e ".[gpu,toolkit]" --group gpu-test
	$(GPU_VENV)/bin/python -c 'import importlib.metadata as m, sys; \
	    names = {d.metadata["Name"].lower() for d in m.distributions()}; \
	    sys.exit("onnxruntime (CPU) is installed next to onnxruntime-gpu: CUDA would be lost") if "onnxruntime" in names else None'
	touch $(GPU_STAMP)

.PHONY: test-gpu bench-gpu
test-gpu: $(GPU_STAMP)
	$(GPU_VENV)/bin/pytest -m gpu tests/gpu

bench-gpu: $(GPU_STAMP)
	$(GPU_VENV)/bin/python bench/gpu.py

# 10 minutes of mixed load against one server; fails when its memory, fds or tasks grow (not in `test`).
soak: $(STAMP)
	$(PY) bench/soak.py --minutes 10

clean:
	rm -rf $(VENV) .venv-triton clients/cpp/build clients/node/dist clients/node/node_modules
	rm -rf .venv-kserve .venv-mlserver $(GPU_VENV)
