# Every target builds its own .venv from nothing but python3, so a fresh clone works.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-portable lint bench matrix test-docker test-swarm test-pythons test-lowest soak clean \
	docs release-check test-reload reload-table restart-table long-lived-table

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demo_services.demo

# The documentation site and the release tools, beside the dev tools in the same .venv.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,docs,release]'
	touch $(DOCS_STAMP)

# The documentation site (mkdocs-material) into site/, strict: any warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# sdist and wheel, twine check --strict, the wheel installed in a clean venv running its quickstart.
release-check: $(DOCS_STAMP)
	$(PY) .ci/release_check.py

# The whole suite with the test apps on asyncio, then on uvloop every test whose services take
# their loop from LOOP (the server and loop matrix and the soak name their loops; the tests in
# process, and the watch app and demo services of the hooks, progress and metrics tests, take
# none; the classic scenario of run() names its loops). The tests of durable jobs start real
# PostgreSQL and Redis servers: .ci/ensure_stores.sh installs them (as root on Debian) when they
# are missing.
UVLOOP_AGAIN := $(addprefix tests/servers/test_,aiohttp_drain.py faults.py run.py durable_jobs.py \
	connections_at_stop.py)
UVLOOP_SAME := tests/servers/test_run.py::test_protected_jobs_finish_and_unprotected_tasks_are_cancelled
# Steps resumed after SIGKILL, and a cancel carried to another replica, on uvloop too.
UVLOOP_AGAIN += $(addprefix tests/servers/test_durable_steps.py::test_,\
	a_job_killed_right_after_its_sixth_step_is_recorded_resumes_at_its_seventh \
	a_job_running_on_another_process_is_cancelled_within_a_poll_and_never_runs_again)

test: lint
	bash .ci/ensure_stores.sh
	LOOP=asyncio $(PY) -m pytest -q tests
	LOOP=uvloop $(PY) -m pytest -q $(UVLOOP_AGAIN) --deselect $(UVLOOP_SAME)

# What a Python version or the lowest dependency versions can break on their own: ruff, mypy
# --strict and the tests marked portable (PORTABLE in tests/conftest.py: every test in process,
# every server on each of its loops, the server internals graceful_web reads, each store), then
# those of UVLOOP_AGAIN on uvloop. make test-pythons and make test-lowest run this.
test-portable: lint
	bash .ci/ensure_stores.sh
	LOOP=asyncio $(PY) -m pytest -q -m portable tests
	LOOP=uvloop $(PY) -m pytest -q -m portable $(UVLOOP_AGAIN) --deselect $(UVLOOP_SAME)

# 200 start/stop cycles of each demo service under load (make test runs 10); prints the figures.
SOAK_CYCLES ?= 200
soak: $(STAMP)
	SOAK_CYCLES=$(SOAK_CYCLES) $(PY) -m pytest -q -s -p no:cacheprovider tests/demo/test_soak.py

# The demo services under a real Docker engine: docker compose stop drains, and a rolling restart
# behind nginx under load. As root on Debian it installs and starts what it needs (docker/test-docker.sh).
test-docker: $(STAMP)
	PY=$(PY) bash docker/test-docker.sh

# Rolling updates driven by Docker Swarm (docker-stack.yml, tests/swarm): docker service update
# --force under load with and without the library, and a rollback. Provisions as test-docker does.
test-swarm: $(STAMP)
	PY=$(PY) bash docker/test-swarm.sh

# make test-portable under Python 3.13 and 3.14 (Debian sid's, in a chroot made by debootstrap,
# cached in .python-cache/), each in its own venv (.venv-3.13, .venv-3.14). As root on Debian.
test-pythons:
	bash .ci/test-pythons.sh

# make test-portable with the lowest version of each dependency pyproject.toml allows (uv's
# --resolution lowest-direct), on python3, in .venv-lowest.
test-lowest:
	PYTHON=$(PYTHON) bash .ci/test-lowest.sh

# What graceful_web costs while serving and how fast it stops, side by side with the bare
# servers, and what a durable job costs beside DBOS and arq (about twelve minutes); writes
# bench/results.md, which docs/benchmarks.md shows whole, and the README's restart table. Needs
# wrk, and PostgreSQL and Redis (installed by .ci/ensure_stores.sh; the bench starts its own
# servers on 127.0.0.1).
# BENCH_QUICK=1 make bench checks the bench itself in about three minutes, writing neither.
# $(PY) -m bench durable measures the durable jobs alone and writes their section of results.md.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	bash bench/install_wrk.sh
	bash .ci/ensure_stores.sh
	$(PY) -m bench
	$(PY) -m tests._restart_table

# Every server on every event loop, drained under SIGTERM; writes its table in
# docs/servers/index.md.
matrix: $(STAMP)
	rm -f .matrix-figures.jsonl
	GRACEFUL_MATRIX_FIGURES=$(CURDIR)/.matrix-figures.jsonl $(PY) -m pytest -q -p no:cacheprovider \
		tests/servers/test_servers_and_loops.py -k "drains_on_its_loop"
	$(PY) -m tests._matrix_table .matrix-figures.jsonl

# Every server stopped with websockets, event feeds, finishing streams, long polls and jobs open,
# with graceful_web and bare; writes the tables of docs/long-lived.md from what was recorded even
# when a test failed (a run records its figures before its checks), and the README's restart
# table, then fails as the tests did.
long-lived-table: $(STAMP)
	rm -f .long-lived-figures.jsonl
	GRACEFUL_LONG_LIVED_FIGURES=$(CURDIR)/.long-lived-figures.jsonl $(PY) -m pytest -q \
		-p no:cacheprovider tests/servers/test_long_lived_matrix.py; status=$$?; \
		$(PY) -m tests._long_lived_table .long-lived-figures.jsonl && $(PY) -m tests._restart_table \
		&& exit $$status

# Reloads on one host (tests/reload): every multi-worker server reloaded twice by its own reload
# signal under load, with graceful_web and bare (GRACEFUL=0), as real processes on 127.0.0.1;
# behind nginx (.ci/ensure_nginx.sh installs it, as root on Debian, when it is missing); with
# SO_REUSEPORT in network namespaces the tests make (unshare, as root or in a user namespace).
test-reload: $(STAMP)
	bash .ci/ensure_nginx.sh
	GRACEFUL_RELOAD_TESTS=1 $(PY) -m pytest -q tests/reload

# make test-reload recording each run's figures; writes the tables in docs/reloads.md and the
# README's restart table from what was recorded even when a test failed (a run records its
# figures before its checks), then fails as the tests did.
reload-table: $(STAMP)
	bash .ci/ensure_nginx.sh
	rm -f .reload-figures.jsonl
	GRACEFUL_RELOAD_FIGURES=$(CURDIR)/.reload-figures.jsonl GRACEFUL_RELOAD_TESTS=1 \
		$(PY) -m pytest -q -p no:cacheprovider tests/reload; status=$$?; \
		$(PY) -m tests._reload_table .reload-figures.jsonl && \
		$(PY) -m tests._websocket_reload_table .reload-figures.jsonl && \
		$(PY) -m tests._restart_table && exit $$status

# The README's one table, what a restart loses bare and with graceful_web: summed from the
# figures the docs pages hold (make demo, make test-docker, make test-swarm, make reload-table,
# make long-lived-table, make bench). tests/test_docs_examples.py fails when it no longer matches them.
restart-table: | $(PY)
	$(PY) -m tests._restart_table

lint: $(STAMP)
	$(PY) -m ruff check graceful_web
	$(PY) -m mypy --strict graceful_web

clean:
	rm -rf $(VENV) build dist site *.egg-info
