.PHONY: install test test-slow demo
install:
	pip install -e .
test:
	python -m pytest -q tests
test-slow:
	python -m pytest -q -m slow tests
demo:
	carebot demo
