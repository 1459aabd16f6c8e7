"""Packaging for relational-rnn: the model modules, their foundations, the task and the
application package ``relational_rnn``; numpy, matplotlib and threadpoolctl.

The demo (``test_relational_rnn_demo.py``), the tests and the benchmarks stay in the checkout.
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
# The user's modules and the foundations they import (one file each, top level).
MODULES = ["attention", "autograd_checks", "layers", "lstm_baseline", "nth_farthest", "optimizer",
           "relational_memory", "relational_rnn_cell"]

setup(
    name="relational-rnn",
    version="0.2.0",
    description="Relational recurrent neural networks (Santoro et al., 2018) in pure NumPy, "
                "with every gradient written by hand and proven by finite differences.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    py_modules=MODULES,
    packages=["relational_rnn"],
    # the shipped trained models (relational_rnn.pretrained): run folders of float32 weights
    package_data={"relational_rnn": ["pretrained/*.md", "pretrained/*/*.json",
                                     "pretrained/*/*/*.npz", "pretrained/*/*/*.jsonl"]},
    install_requires=["numpy>=1.23", "matplotlib>=3.5", "threadpoolctl>=3.1"],
    extras_require={
        "test": ["pytest>=7", "wheel"],                  # wheel: the packaging test builds one
        "notebook": ["nbformat>=5", "nbclient>=0.7", "ipykernel>=6", "ipython>=8"],
        "mpi": ["mpi4py", "mpich"],                      # mpiexec -n N nth-farthest ...
    },
    entry_points={"console_scripts": [
        "nth-farthest = relational_rnn.cli:main",
        "rrnn-gradcheck = autograd_checks:main",
    ]},
    license="MIT",
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering"],
)
