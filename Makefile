# The two commands of the README: `make demo` and `make test` (both create/update .venv first).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export PAIRFORGE_CACHE ?= $(CURDIR)/.cache/pairforge

.PHONY: venv demo test quality style clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh
	sh scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# Embedded default: tiny models, local Ray, bundled prompts -> pair shards, manifest, stats and an HTML
# report, a Hub-ready release of them (out/demo-release, rebuilt each time), then a few Diffusion-DPO
# steps on them -> a checkpoint; then the video categories on tiny Wan models (out/demo-video: a few image
# pairs, and the videos animated from them) and its release (out/demo-video-release, rebuilt each time).
# Re-running adds nothing that exists.
demo: $(STAMP)
	$(BIN)/pairforge run configs/demo.yaml
	$(BIN)/pairforge stats out/demo --html out/demo/report.html
	$(BIN)/pairforge release out/demo out/demo-release --config configs/release_demo.yaml --overwrite
	$(BIN)/pairforge train configs/demo_train.yaml
	$(BIN)/pairforge run configs/demo_video.yaml
	$(BIN)/pairforge stats out/demo-video --html out/demo-video/report.html
	$(BIN)/pairforge release out/demo-video out/demo-video-release --config configs/release_demo_video.yaml --overwrite

test: $(STAMP) browser
	$(BIN)/pytest tests

# The HTML report test drives Debian's chromium. Install it where we can (root on Debian, as in CI);
# elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed and cannot be installed here: the HTML report test will skip"

quality: $(STAMP)
	$(BIN)/ruff check .

style: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf out .cache .pytest_cache
