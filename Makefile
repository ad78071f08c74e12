# The two commands of the README: `make demo` and `make test` (both create/update .venv first).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export PAIRFORGE_CACHE ?= $(CURDIR)/.cache/pairforge

.PHONY: venv demo test quality style clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh
	sh scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# Embedded default: tiny models, local Ray, bundled prompts -> pair shards, manifest, stats, then a
# few Diffusion-DPO steps on them -> a checkpoint. Re-running resumes (adds nothing that exists).
demo: $(STAMP)
	$(BIN)/pairforge run configs/demo.yaml
	$(BIN)/pairforge train configs/demo_train.yaml

test: $(STAMP)
	$(BIN)/pytest tests

quality: $(STAMP)
	$(BIN)/ruff check .

style: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf out .cache .pytest_cache
