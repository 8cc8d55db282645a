# `make demo`: compile a CAPTCHA breaker on defaults and use it.  `make test`: the test suite.
# Both create .venv and install what they need (torch pinned to the CPU build 2.13.0).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STYLE ?= baidu2011
MINUTES ?= 5

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[captcha,plots,test]'
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

demo: $(BIN)/.installed
	mkdir -p out
	$(BIN)/infcomp samples --style $(STYLE) -n 32 --out out/$(STYLE)-samples.png
	$(BIN)/infcomp compile --style $(STYLE) --minutes $(MINUTES) --out out/$(STYLE).pt
	$(BIN)/infcomp evaluate out/$(STYLE).pt -n 500 --posterior-n 500 --gallery out/$(STYLE)-gallery.png

.PHONY: install test demo
