"""The model kinds the application trains, in one registry: the command line, checkpoints,
figures, the memory demo and the benchmarks all read it.

A kind (``rmc``, ``lstm``, ``rrnn``) is a classifier class of the model files with a label, a
title and the sizes (:class:`relational_rnn.config.ModelSizes` fields) it is built from.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

import nth_farthest as nf
from lstm_baseline import LSTMClassifier
from relational_memory import RMCClassifier
from relational_rnn.config import ModelSizes
from relational_rnn_cell import RelationalRNNClassifier

MEMORY_SIZES = ("mem_slots", "head_size", "num_heads", "num_blocks", "key_size",
                "attention_mlp_layers", "gate_style")


def _memory_kwargs(s: ModelSizes) -> dict:
    return dict(num_heads=s.num_heads, num_blocks=s.num_blocks, key_size=s.key_size,
                attention_mlp_layers=s.attention_mlp_layers, gate_style=s.gate_style)


def _rmc_kwargs(s: ModelSizes) -> dict:
    return dict(mem_slots=s.mem_slots, head_size=s.head_size, **_memory_kwargs(s))


def _lstm_kwargs(s: ModelSizes) -> dict:
    return dict(hidden_size=s.hidden_size)


RRNN_OPTIONS = ("memory_input", "memory_readout")


def _rrnn_kwargs(s: ModelSizes) -> dict:
    # The RelationalRNN names its memory num_slots x slot_size, slot_size = heads x head size;
    # its options left None take the model's defaults.
    options = {k: getattr(s, k) for k in RRNN_OPTIONS if getattr(s, k) is not None}
    return dict(hidden_size=s.hidden_size, num_slots=s.mem_slots,
                slot_size=s.num_heads * s.head_size, **_memory_kwargs(s), **options)


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: ``classifier`` maps a (B, T, W) batch to (B, K) logits."""

    name: str
    label: str                      # short, for legends and tables
    title: str                      # long, for the log
    color: str                      # in every figure
    classifier: type
    size_fields: tuple[str, ...]    # the ModelSizes fields it uses, in run_config.json order
    _kwargs: Callable[[ModelSizes], dict]

    def constructor_kwargs(self, sizes: ModelSizes, num_objects: int,
                           num_features: int) -> dict:
        """Keyword arguments of :attr:`classifier` for a K x F task."""
        return dict(input_size=nf.task_width(num_objects, num_features),
                    num_classes=num_objects, mlp_hidden=list(sizes.mlp_hidden),
                    **self._kwargs(sizes))

    def build(self, sizes: ModelSizes, num_objects: int, num_features: int, *,
              dtype=np.float32, rng: np.random.Generator | None = None):
        """A fresh classifier for a K x F task (parameters drawn from ``rng``)."""
        return self.classifier(**self.constructor_kwargs(sizes, num_objects, num_features),
                               dtype=dtype, rng=np.random.default_rng(0) if rng is None else rng)


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("rmc", "RMC", "RMC (relational memory core)", "tab:red", RMCClassifier,
              MEMORY_SIZES + ("mlp_hidden",), _rmc_kwargs),
    ModelKind("lstm", "LSTM", "LSTM baseline", "tab:blue", LSTMClassifier,
              ("hidden_size", "mlp_hidden"), _lstm_kwargs),
    ModelKind("rrnn", "RelationalRNN", "RelationalRNN (LSTM + relational memory)", "tab:green",
              RelationalRNNClassifier,
              ("hidden_size",) + MEMORY_SIZES + ("mlp_hidden",) + RRNN_OPTIONS, _rrnn_kwargs),
)}
MODEL_KINDS = tuple(KINDS)
SIZE_FIELDS_BY_KIND = {k.name: k.size_fields for k in KINDS.values()}


def model_kind(name: str) -> ModelKind:
    """The registry entry of ``name``; ValueError naming the kinds otherwise."""
    if name not in KINDS:
        raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {name!r}")
    return KINDS[name]


def build_model(kind: str, sizes: ModelSizes | Mapping, num_objects: int, num_features: int, *,
                dtype=np.float32, rng: np.random.Generator | None = None):
    """A fresh classifier of ``kind`` (``rmc``, ``lstm``, ``rrnn``) for a K x F task; ``sizes``
    a :class:`ModelSizes` or a mapping of its fields (``{"hidden_size": 64, ...}``)."""
    if isinstance(sizes, Mapping):
        sizes = ModelSizes.from_json(sizes)
    return model_kind(kind).build(sizes, num_objects, num_features, dtype=dtype, rng=rng)
