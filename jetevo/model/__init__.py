"""The models: the GPT backbone shared by the tree (jet-evolution) and flat (OmniJet-alpha)
modes, their heads, losses, sequences, training and split metrics."""

from __future__ import annotations

import numpy as np

from jetevo.model.checkpoint import load_model
from jetevo.model.flat import FlatModel
from jetevo.model.gpt import ModelConfig
from jetevo.model.tree import JetEvolutionModel


def children_kinematics(tokenizer, prediction: dict, parent_p: np.ndarray) -> dict[str, np.ndarray]:
    """Four-momenta (n, 4) of predicted children, decoded relative to their parents' four-momenta."""
    parent_p = np.asarray(parent_p, np.float64)
    return {
        side: tokenizer.decode(np.asarray(prediction[side].cpu()), parent=parent_p)
        for side in ("left", "right")
    }


__all__ = ["FlatModel", "JetEvolutionModel", "ModelConfig", "children_kinematics", "load_model"]
