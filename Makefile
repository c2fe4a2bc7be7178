# The two set-up commands of the README: `make run` and `make test`. Each installs what is
# missing first (scripts/setup.sh), so both work on a fresh machine.

MODEL_DIR ?= models/clip-ViT-B-32-multilingual-v1
ARGS ?=

.PHONY: setup run test lint fixtures bench test-deploy test-ui screenshot

setup:
	@scripts/setup.sh

## Download the default model once, then serve it on 0.0.0.0:8080.
run: setup
	@[ -f $(MODEL_DIR)/sightline.json ] || cargo run --release -- model pull --dir $(MODEL_DIR)
	cargo run --release -- serve --model-dir $(MODEL_DIR) $(ARGS)

## Formatting, lints, the whole test suite (unit, golden, contract, CLI) and the deployment files.
test: setup lint test-deploy
	cargo test --all-targets
	@$(MAKE) --no-print-directory test-ui
	@[ -n "$$SIGHTLINE_ES_URL" ] || echo "*** SKIPPED es_e2e (real Elasticsearch): set SIGHTLINE_ES_URL and SIGHTLINE_SIDECAR_URL to run setup -> ingest -> search against a cluster ***"

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

## The gallery in headless Chromium (installs chromium + chromium-driver when missing): type,
## drop, more like this, a filter, the sidecar stopped. Also rewrites the README screenshot.
test-ui: setup
	@scripts/setup-ui.sh
	cargo test --test contract gallery_ui -- --ignored

## The same browser run, writing the README's screenshot to docs/gallery.png.
screenshot: setup
	@scripts/setup-ui.sh
	SIGHTLINE_SCREENSHOT=$(CURDIR)/docs/gallery.png cargo test --test contract gallery_ui -- --ignored

## Render deploy/kubernetes and check it against the Kubernetes schemas and checkov (no cluster).
test-deploy:
	scripts/validate-k8s.sh

## Regenerate the tiny test models, images and golden vectors (byte-identical on re-run).
fixtures: setup
	tools/regenerate.sh

## Throughput benchmark against model-only and a Python peer (downloads photos; minutes).
bench: setup
	bench/run.sh
