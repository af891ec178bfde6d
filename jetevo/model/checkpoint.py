"""Model checkpoints: config, weights, tokenizer identity and count baselines in one file.

Loading refuses, in one line, a file that is not a jetevo model, and ``init_from`` lists
every missing or unexpected key instead of ignoring it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from jetevo.errors import InputError
from jetevo.model.gpt import CHECKPOINT_KIND, JetEvolutionModel, ModelConfig

HEAD_PREFIXES = (
    "left_head.",
    "right_head.",
    "right_xattn.",
    "out_bias",
    "group_emb.",
    "group_bias",
)


def read_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model checkpoint")
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise InputError(path, "not a jetevo model checkpoint")
    return state


def load_model(path: str | Path) -> JetEvolutionModel:
    state = read_state(path)
    # settings that checkpoints from before them lack, as those checkpoints were trained:
    # a flat output (no output_group_size), the one-key right head (no right_head) and no
    # scale input (no scale_bins)
    old = {"output_group_size": 0, "right_head": "left-child", "scale_bins": 0}
    try:
        cfg = ModelConfig(**{**old, **state["config"]})
    except (TypeError, ValueError) as exc:  # unknown keys; SettingError is a ValueError
        raise InputError(path, f"bad model config in the checkpoint ({exc})") from None
    model = JetEvolutionModel(cfg)
    try:
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            path, f"damaged checkpoint: the weights do not fit its config ({first})"
        ) from None
    model.tokenizer_identity = state.get("tokenizer_identity")
    model.extra = {k: v for k, v in state.items() if k not in ("state_dict",)}
    return model.eval()


def save_model(model: JetEvolutionModel, path: str | Path, extra: dict | None = None) -> None:
    from jetevo.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.checkpoint_state(extra), tmp)


def init_from(model: JetEvolutionModel, path: str | Path, heads: str = "keep") -> dict:
    """Load pretrained weights into ``model``: the backbone always, the heads if ``heads="keep"``.

    The vocabulary and tokenizer must match. Returns the missing and unexpected keys,
    which the caller reports.
    """
    state = read_state(path)
    cfg = state["config"]
    if cfg["n_codes"] != model.cfg.n_codes:
        raise InputError(
            path,
            f"pretrained model has a vocabulary of {2 * cfg['n_codes'] + 3} tokens, this one {model.cfg.vocab_size}",
        )
    if model.tokenizer_identity and state.get("tokenizer_identity") != model.tokenizer_identity:
        raise InputError(
            path,
            f"pretrained on tokenizer {state.get('tokenizer_identity')}, these tokens come from {model.tokenizer_identity}",
        )
    weights = state["state_dict"]
    pretrained_head = cfg.get("right_head", "left-child")
    if heads == "keep" and pretrained_head != model.cfg.right_head:
        raise InputError(
            path,
            f"pretrained with right_head={pretrained_head}, this model has "
            f"{model.cfg.right_head}: the heads cannot be kept (train.init_heads=reinit)",
        )
    if heads == "reinit":
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIXES)}
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise InputError(
            path, f"shape mismatch for {', '.join(mismatched[:5])} (different model size?)"
        )
    result = model.load_state_dict(weights, strict=False)
    return {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys)}
