"""Solution of exercise 2: the memory's initial state and Sonnet's Linear initialisation.

The explanations are in the exercise's docstrings (``exercises/exercise_02_initialisation.py``).
"""
from __future__ import annotations

import math

import numpy as np


def initial_memory(batch_size, mem_slots, mem_size, dtype=np.float64):
    """(B, N, d): the N x N identity, zero-padded (or cut) to d columns, one copy per example."""
    eye = np.eye(mem_slots, mem_size, dtype=dtype)
    return np.tile(eye, (batch_size, 1, 1))


def truncated_normal_init(rng, fan_in, shape):
    """Normal of stddev 1/sqrt(fan_in), every value beyond two stddev drawn again."""
    w = rng.standard_normal(size=shape)
    outside = np.abs(w) > 2.0
    while outside.any():
        w[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(w) > 2.0
    return w / math.sqrt(fan_in)


def uniform_init(rng, fan_in, shape):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the library's first, narrower choice."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def truncated_normal_std(cut=2.0):
    """Stddev of a standard normal kept only on [-cut, cut]: sqrt(1 - 2 c phi(c) / mass)."""
    density = math.exp(-0.5 * cut * cut) / math.sqrt(2.0 * math.pi)     # phi(cut)
    mass = math.erf(cut / math.sqrt(2.0))                               # P(|z| <= cut)
    return math.sqrt(1.0 - 2.0 * cut * density / mass)
