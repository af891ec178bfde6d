"""The models: the GPT backbone shared by the tree (jet-evolution) and flat (OmniJet-alpha)
modes, their heads, losses, sequences, training and split metrics."""

from __future__ import annotations

import numpy as np

from jetevo.model.checkpoint import load_model
from jetevo.model.flat import FlatModel
from jetevo.model.gpt import ModelConfig
from jetevo.model.tree import JetEvolutionModel


def children_kinematics(tokenizer, prediction: dict, parent_p: np.ndarray) -> dict[str, np.ndarray]:
    """Four-momenta (n, 4) of predicted children, decoded together as a decay of their
    parents' four-momenta (:meth:`~jetevo.tokenize.tokenizer.Tokenizer.decode_split`, as
    generation decodes them): the two add up to their parent exactly."""
    left, right = tokenizer.decode_split(
        np.asarray(parent_p, np.float64),
        np.asarray(prediction["left"].cpu()),
        np.asarray(prediction["right"].cpu()),
    )
    return {"left": left, "right": right}


__all__ = ["FlatModel", "JetEvolutionModel", "ModelConfig", "children_kinematics", "load_model"]
