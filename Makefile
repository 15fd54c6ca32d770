# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO ?= runs/demo

.PHONY: install demo test lint

install:
	$(PIP) install --quiet -e ".[all]"

# The main job on the built-in data (scikit-learn's 1,797 real handwritten digits): train a base
# with the default recipe, then search pruning, distillation and INT8 for the smallest, fastest
# model within 1 point of it, every candidate measured on this machine; ends with the report path.
demo: install
	rm -rf $(DEMO)
	$(PYTHON) -m leanvision optimize builtin:digits --out $(DEMO)

lint:
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest
