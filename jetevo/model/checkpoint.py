"""Model checkpoints: config, weights, tokenizer identity and count baselines in one file.

Read and written through :mod:`jetevo.io.checkpoint` (``weights_only`` loading, a format
version, migrations). Loading refuses, in one line, a file that is not a jetevo model, and
``init_from`` lists every missing or unexpected key instead of ignoring it.
"""

from __future__ import annotations

from pathlib import Path

from jetevo.errors import InputError
from jetevo.io.checkpoint import Retired, read_checkpoint, write_checkpoint
from jetevo.model.flat import FlatModel
from jetevo.model.gpt import ModelConfig
from jetevo.model.sequences import FlatSequences, TreeSequences
from jetevo.model.tree import JetEvolutionModel

KIND = "jetevo-model"
FORMAT_VERSION = 2
Model = JetEvolutionModel | FlatModel

# parameters of the heads (re-initialised by ``init_heads=reinit``), per mode
HEAD_PREFIXES = {
    "tree": ("left_head.", "right_head.", "right_xattn.", "output."),
    "flat": ("head.", "output."),
}

# version 2: tree models speak the split-exact-v2 tokens (their order table holds the root
# grid's log pT too); the tree models of versions 0 and 1 spoke retired tokens
_RETIRED_TREE = (
    "its tree model speaks tokens of the retired parent-relative-v1 representation; "
    "retrain it (and its tokenizer) with this jetevo"
)


def _migrate_v0(state: dict) -> dict:
    raise Retired(_RETIRED_TREE)  # every version-0 model is a tree model


def _migrate_v1(state: dict) -> dict:
    if state["config"].get("mode", "tree") == "tree":
        raise Retired(_RETIRED_TREE)
    return state


def read_state(path: str | Path) -> dict:
    return read_checkpoint(
        path, KIND, FORMAT_VERSION, {0: _migrate_v0, 1: _migrate_v1}, "model checkpoint"
    )


def build_model(cfg: ModelConfig) -> Model:
    return FlatModel(cfg) if cfg.mode == "flat" else JetEvolutionModel(cfg)


def load_model(path: str | Path) -> Model:
    """The model saved at ``path`` (either mode), in eval mode, with the checkpoint's other
    entries as ``model.extra``."""
    state = read_state(path)
    try:
        cfg = ModelConfig(**state["config"])
    except (TypeError, ValueError) as exc:  # unknown keys; SettingError is a ValueError
        raise InputError(path, f"bad model config in the checkpoint ({exc})") from None
    try:
        model = build_model(cfg)
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError, TypeError, AttributeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            path, f"damaged checkpoint: the weights do not fit its config ({first})"
        ) from None
    model.tokenizer_identity = state.get("tokenizer_identity")
    model.extra = {k: v for k, v in state.items() if k != "state_dict"}
    return model.eval()


def save_model(model: Model, path: str | Path, extra: dict | None = None) -> None:
    state = {
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "tokenizer_identity": model.tokenizer_identity,
        **(extra or {}),
    }
    write_checkpoint(state, path, KIND, FORMAT_VERSION)


def init_from(model: Model, path: str | Path, heads: str = "keep") -> dict:
    """Load pretrained weights into ``model``: the backbone always, the heads if ``heads="keep"``.

    The mode, vocabulary and tokenizer must match. Returns the missing and unexpected
    keys, which the caller reports.
    """
    state = read_state(path)
    cfg = state["config"]
    if cfg.get("mode", "tree") != model.cfg.mode:
        raise InputError(
            path, f"pretrained in {cfg.get('mode')} mode, this model is {model.cfg.mode} mode"
        )
    if cfg["n_codes"] != model.cfg.n_codes:
        raise InputError(
            path,
            f"pretrained model has a vocabulary of {ModelConfig(n_codes=cfg['n_codes']).vocab.size} "
            f"tokens, this one {model.cfg.vocab.size}",
        )
    if model.tokenizer_identity and state.get("tokenizer_identity") != model.tokenizer_identity:
        raise InputError(
            path,
            f"pretrained on tokenizer {state.get('tokenizer_identity')}, these tokens come from {model.tokenizer_identity}",
        )
    weights = state["state_dict"]
    if model.cfg.mode == "tree":
        pretrained_head = cfg.get("right_head", "left-child")
        if heads == "keep" and pretrained_head != model.cfg.right_head:
            raise InputError(
                path,
                f"pretrained with right_head={pretrained_head}, this model has "
                f"{model.cfg.right_head}: the heads cannot be kept (train.init_heads=reinit)",
            )
    if heads == "reinit":
        prefixes = HEAD_PREFIXES[model.cfg.mode]
        weights = {k: v for k, v in weights.items() if not k.startswith(prefixes)}
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise InputError(
            path, f"shape mismatch for {', '.join(mismatched[:5])} (different model size?)"
        )
    result = model.load_state_dict(weights, strict=False)
    return {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys)}


def count_baselines(model: Model, ckpt: str | Path):
    """The unigram and bigram baselines that training stored in the checkpoint."""
    from jetevo.model.baselines import CountBaselines

    if "baselines" not in model.extra:
        raise InputError(ckpt, "the checkpoint holds no count baselines")
    return CountBaselines.from_state(model.extra["baselines"])


def model_tokenizer(model: Model, ckpt: str | Path, given: str | Path | None = None):
    """The tokenizer a model speaks: ``given``, or the one its checkpoint records; refused
    in one line if it is not the one the model was trained on."""
    from jetevo.tokenize.tokenizer import Tokenizer

    info = model.extra.get("tokenizer") or {}
    path = given or info.get("path")
    if not path or not Path(path).is_file():
        raise InputError(ckpt, f"tokenizer checkpoint {path!r} not found; pass --tokenizer")
    tok = Tokenizer.load(path)
    if tok.identity != model.tokenizer_identity:
        raise InputError(
            path,
            f"tokenizer {tok.identity} is not the one the model was trained on ({model.tokenizer_identity})",
        )
    return tok


def model_sequences(
    model: Model, ckpt: str | Path, token_paths, tokenizer: str | Path | None = None
) -> TreeSequences | FlatSequences:
    """What ``model`` reads from held-out token files, as its training built it: flat
    sequences, or tree sequences ordered by the model's stored log z (the tokenizer's, for
    a checkpoint from before it was stored). Refused in one line: no jets, or tokens of
    another tokenizer."""
    seqs: TreeSequences | FlatSequences
    if isinstance(model, FlatModel):
        seqs = FlatSequences(token_paths, model.vocab, model.cfg.max_len)
    else:
        order_log_z = model.log_z_table()
        if order_log_z is None:
            from jetevo.tokenize.resolution import code_log_z

            order_log_z = code_log_z(model_tokenizer(model, ckpt, tokenizer))
        seqs = TreeSequences(
            token_paths, model.vocab, model.cfg.max_len, order_log_z, model.cfg.scale_bins
        )
    if not len(seqs):
        raise InputError(seqs.files[0], "the token files hold no jets")
    if seqs.tokenizer["identity"] != model.tokenizer_identity:
        raise InputError(
            seqs.files[0],
            f"tokens come from tokenizer {seqs.tokenizer['identity']}, the model was trained "
            f"on {model.tokenizer_identity}",
        )
    return seqs


__all__ = [
    "Model",
    "count_baselines",
    "init_from",
    "load_model",
    "model_sequences",
    "model_tokenizer",
    "save_model",
]
