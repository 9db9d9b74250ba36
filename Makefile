# marnn: two commands do everything (see README).
#   make book   set up .venv, execute the notebooks with papermill (paper-2core: reads the store, never
#               trains; BOOK_SCALE=quick for a fast build), build the Jupyter Book
#   make test   set up .venv, run the whole test suite (unit, nbval, browser)
#   make lint   ruff check and mypy
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BOOK_SCALE ?= paper-2core
export TQDM_DISABLE ?=

.PHONY: install book notebooks test test-unit test-nbval test-browser bench lint clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[book,test]"
	@touch $(STAMP)

install: $(STAMP)

# Execute the notebooks with papermill into book/generated/ (results come from
# the committed store in results/; missing runs are computed). A page runs again
# only when its inputs changed (fingerprints in book/generated/<name>.inputs.json);
# FORCE=1 runs every page.
notebooks: $(STAMP)
	$(BIN)/python -m marnn.book execute --scale $(BOOK_SCALE) --out book/generated $(if $(FORCE),--force)

book: notebooks
	$(BIN)/jupyter-book build book -W -n --keep-going -q
	@echo "Book built: $(CURDIR)/book/_build/html/index.html"

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2 -m "not browser" tests
	rm -rf build/nbval
	$(BIN)/python -m marnn.book execute --scale smoke --out build/nbval --threads 1
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly build/nbval
	@# the browser check reads a book rendered from those same smoke notebooks
	rm -rf build/book && mkdir -p build/book
	cp -r book/_config.yml book/_toc.yml book/*.md book/_ext book/_static book/reference build/book/
	cp -r build/nbval build/book/generated
	$(BIN)/jupyter-book build build/book -W -n --keep-going -q
	MARNN_BOOK_HTML=build/book/_build/html $(BIN)/python -m pytest -m browser tests/test_browser.py

# ruff (rules E, F, W, I, B, UP; pyproject.toml) and mypy; the first step of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check marnn tests; status=$$?; $(BIN)/mypy marnn && exit $$status

bench: $(STAMP)
	$(BIN)/python -m marnn.bench

clean:
	rm -rf book/_build book/generated build
