# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv on first use, installs petribill with its dependencies,
# generates the gRPC stubs, and runs. Only python3 (3.11), pip and the
# package registries are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

PROTOS := $(wildcard proto/petribill/v1/*.proto)
STUBS  := proto/petribill/v1/.stubs-stamp

.PHONY: demo test lint typecheck bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# gRPC stubs are generated from the .proto files by the build, never edited.
$(STUBS): $(STAMP) $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto $(PROTOS)
	touch $(STUBS)

proto: $(STUBS)

demo: $(STUBS)
	$(BIN)/petribill demo

test: $(STUBS)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy billing petri actors cluster chaos

bench: $(STAMP)
	$(BIN)/python bench/rating.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(STUBS) proto/petribill/v1/*_pb2*
