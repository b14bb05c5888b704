from setuptools import find_packages, setup


extras = {
    "train": ["accelerate>=1.0", "peft>=0.15", "tensorboard"],
    "demo": ["gradio>=6,<7", "matplotlib"],
    "flash": ["flash-attn>=2.6"],
}
extras["dev"] = sorted(
    set(extras["train"] + extras["demo"]) | {"pytest>=8", "pytest-timeout", "ruff>=0.6", "gradio_client", "playwright"}
)

setup(
    name="diffusers-sa3",
    version="0.1.0",
    description="Stable Audio 3 for diffusers: official-parity models, pipelines, training and a demo.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "accelerate>=1.0",  # init_empty_weights when loading official checkpoints
        "diffusers>=0.42,<0.43",
        "transformers>=5.0",
        "safetensors>=0.4",
        "huggingface_hub",
        "numpy",
        "soundfile>=0.12",
        "soxr>=0.3",
        "tqdm",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["diffusers-sa3=diffusers_sa3.cli:main"]},
)
