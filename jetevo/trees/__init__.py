"""kt declustering trees: FastJet reclustering and the Parquet tree format."""

from jetevo.trees.format import load, read_metadata, triplets, validate

__all__ = ["load", "read_metadata", "triplets", "validate"]
