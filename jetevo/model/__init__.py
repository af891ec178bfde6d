"""The jet-evolution model: GPT backbone, split heads, training, split metrics."""

from __future__ import annotations

import numpy as np

from jetevo.model.gpt import JetEvolutionModel, ModelConfig


def children_kinematics(tokenizer, prediction: dict, parent_p: np.ndarray) -> dict[str, np.ndarray]:
    """Four-momenta (n, 4) of predicted children, decoded relative to their parents' four-momenta."""
    parent_p = np.asarray(parent_p, np.float64)
    return {
        side: tokenizer.decode(np.asarray(prediction[side].cpu()), parent=parent_p)
        for side in ("left", "right")
    }


__all__ = ["JetEvolutionModel", "ModelConfig", "children_kinematics"]
