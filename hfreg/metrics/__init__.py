"""Metric modules shipped with hfreg: `load("accuracy")` works on an offline machine."""

import os

import evaluate

_HERE = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = ("accuracy", "f1")


def load(name: str):
    if name not in AVAILABLE:
        raise ValueError(f"unknown metric {name!r}; hfreg ships {list(AVAILABLE)}")
    return evaluate.load(os.path.join(_HERE, name))
