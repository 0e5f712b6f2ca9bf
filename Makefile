# make demo: set up and audit a bundled example.  make test: set up and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dropcheck audit examples/preresnet.py -a position=P3 -a head_position=H5 --fail-on never

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) benchmarks/audit_speed.py

clean:
	rm -rf $(VENV) build dist *.egg-info
