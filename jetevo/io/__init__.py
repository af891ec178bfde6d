"""Readers and writers for JetClass (ROOT) and AspenOpenJets (HDF5), and Pythia samples."""

from jetevo.io.readers import count_jets, detect_format, iter_jets

__all__ = ["count_jets", "detect_format", "iter_jets"]
