"""Physics evaluation of trees: observables, metrics with truth-vs-truth floors, plots."""

from jetevo.evaluate.metrics import binned_kl, compare
from jetevo.evaluate.observables import OBSERVABLES, observables
from jetevo.evaluate.run import evaluate, format_table

__all__ = ["OBSERVABLES", "binned_kl", "compare", "evaluate", "format_table", "observables"]
