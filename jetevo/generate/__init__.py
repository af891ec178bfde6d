"""Batch generation of whole jets as declustering trees (``jetevo generate``)."""

from jetevo.generate.run import GenerationError, generate
from jetevo.generate.sampler import SampledTrees, sample_trees

__all__ = ["GenerationError", "SampledTrees", "generate", "sample_trees"]
