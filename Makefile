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

# ruff, then the package layers of DESIGN.md ([tool.importlinter] in pyproject.toml; called
# through $(PYTHON), like ruff, so that the installed environment's import-linter runs)
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports; \
	  sys.exit(lint_imports(no_cache=True, no_logo=True))"

test: install lint
	$(PYTHON) -m pytest
