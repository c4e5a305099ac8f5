# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FREEZELAB_DATA ?= $(abspath ../shared/data)

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision must come as a matching pair of builds.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q "torch<=2.14.1" "torchvision<=0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/freezelab demo

test: $(STAMP)
	FREEZELAB_DATA=$(FREEZELAB_DATA) MPLBACKEND=Agg $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
