# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO ?= runs/demo

.PHONY: install demo test lint

install:
	$(PIP) install --quiet -e ".[all]"

# The main job on the built-in data (scikit-learn's 1,797 real handwritten digits): train with
# the default recipe, evaluate the artifact in a fresh process, and describe it.
demo: install
	rm -rf $(DEMO)
	$(PYTHON) -m leanvision train builtin:digits --out $(DEMO)/digits
	$(PYTHON) -m leanvision eval $(DEMO)/digits --split val
	$(PYTHON) -m leanvision info $(DEMO)/digits

lint:
	$(PYTHON) -m ruff check .

test: install lint
	$(PYTHON) -m pytest
