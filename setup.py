"""Packaging for relational-rnn: the top-level modules of this folder, numpy and matplotlib."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# Every top-level module of this folder is installed, the demo script included; only this file is not.
MODULES = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "setup")

setup(
    name="relational-rnn",
    version="0.1.0",
    description="Relational recurrent neural networks (Santoro et al., 2018) in pure NumPy, "
                "with every gradient written by hand and proven by finite differences.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    py_modules=MODULES,
    install_requires=["numpy>=1.23", "matplotlib>=3.5"],
    extras_require={"test": ["pytest>=7"]},
    license="MIT",
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering"],
)
