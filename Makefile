PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint bench soak demo image clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check eventsinkd tests bench
	$(BIN)/ruff format --check eventsinkd tests bench
	$(BIN)/mypy --strict eventsinkd
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/eventsinkd demo

bench: $(STAMP)
	$(BIN)/python -m bench

soak: $(STAMP)
	$(BIN)/python -m bench.soak

# The container image, with podman (daemonless; --format docker keeps the HEALTHCHECK) or
# docker, whichever is installed. BASE_IMAGE=... builds FROM another image (one made
# locally where no registry is reachable); BUILD_FLAGS=... go to the build as they are,
# e.g. behind a TLS-inspecting proxy, with podman: the host's CA bundle for pip,
#   BUILD_FLAGS='-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
#                --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt'
IMAGE ?= eventsinkd:latest
BUILD_FLAGS ?=
image:
	@engine=$$(command -v podman || command -v docker); \
	if [ -z "$$engine" ]; then echo "make image: install podman or docker" >&2; exit 1; fi; \
	format=$$(case "$$engine" in *podman) echo "--format docker";; esac); \
	set -x; "$$engine" build $$format $${BASE_IMAGE:+--build-arg BASE_IMAGE=$$BASE_IMAGE} \
	  $(BUILD_FLAGS) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
