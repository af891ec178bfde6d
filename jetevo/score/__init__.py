"""Per-jet likelihoods under a trained model (``jetevo score``)."""

from jetevo.score.likelihood import format_scores, score, write_scores

__all__ = ["format_scores", "score", "write_scores"]
