"""``Tokenizer``: node kinematics <-> integer tokens, one node at a time.

A node's token is a function of its own four-momentum and one reference four-momentum (the
context that generation always has): its parent's for the tree feature set, its jet axis's
for the flat one (:mod:`jetevo.tokenize.features`), never of other nodes of the jet, so any
single node, real or generated, encodes and decodes alone. Batch-friendly: every method
takes flat arrays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

import awkward as ak
import numpy as np

from jetevo.config import build, check, check_fields, setting
from jetevo.errors import InputError, SettingError
from jetevo.io import checkpoint as ckpt
from jetevo.tokenize import features as F
from jetevo.tokenize.root import RootQuantizer
from jetevo.tokenize.vocab import Vocab

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

CHECKPOINT_KIND = "jetevo-tokenizer"
# 1: tensors only (weights-only loading); 0: older checkpoints holding numpy arrays
CHECKPOINT_VERSION = 1
MIGRATIONS: dict[int, ckpt.Migration] = {0: ckpt.tensors_only}


@dataclass
class TokenizerConfig:
    """Tokenizer settings (``configs/tokenizer.yaml``); every field can be overridden. Types
    and ranges are checked on every construction (:func:`jetevo.config.check_fields`)."""

    n_codes: int = setting(8192, ge=1)
    hidden: int = setting(64, ge=1)
    n_layers: int = setting(2, ge=1)
    # the node features (features.FEATURE_SETS): tree mode's parent-relative set, or flat
    # mode's jet-relative one (which trains on particles only)
    feature_set: str = setting(F.FEATURE_SET, choices=F.FEATURE_SETS)
    # one weight > 0 per feature of the set (the standardizer divides by it); None: the
    # set's default weights
    feature_weights: list[float] | None = setting(None, gt=0)  # noqa: RUF009 (a field)
    batch_size: int = setting(4096, ge=1)
    lr: float = setting(1e-4, gt=0)
    max_steps: int = setting(2000, ge=0)  # 0: the k-means initialisation alone
    commitment_weight: float = setting(0.25, ge=0)
    ema_decay: float = setting(0.99, ge=0, lt=1)
    dead_code_fraction: float = setting(0.003, ge=0)
    first_split_fraction: float = 0.15  # checked in __post_init__
    kmeans_sample: int = setting(300_000, ge=1)
    kmeans_iters: int = setting(15, ge=1)
    checkpoint_every: int = setting(500, ge=1)
    seed: int = setting(0, ge=0)

    # settings a resumed training may change: how far it goes and how often it saves
    RESUMABLE: ClassVar[tuple[str, ...]] = ("max_steps", "checkpoint_every")

    def __post_init__(self) -> None:
        share = self.first_split_fraction
        if not (
            isinstance(share, (int, float))
            and not isinstance(share, bool)
            and math.isfinite(share)
            and 0 <= share < 1
        ):
            raise SettingError(f"first_split_fraction must be a number in [0, 1), got {share!r}")
        check_fields(self)
        features = F.feature_set(self.feature_set)
        if self.feature_weights is None:
            self.feature_weights = list(features.default_weights)
        self.feature_weights = _checked_weights(self.feature_weights, features, lenient=False)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        """From a flat config mapping (:func:`jetevo.config.build`): unknown keys refused,
        numeric strings such as ``1e-4`` read as numbers."""
        if isinstance(d, dict) and d.get("feature_weights") is not None:
            # checked as given (before build turns them into floats), against the set's length
            features = F.FEATURE_SETS.get(d.get("feature_set", F.FEATURE_SET))
            if features is not None:
                weights = _checked_weights(d["feature_weights"], features, lenient=True)
                d = {**d, "feature_weights": weights}
        return build(cls, d, "tokenizer", prefix=False)


def _checked_weights(weights, features: F.FeatureSet, lenient: bool) -> list[float]:
    """``weights`` checked to be one number > 0 per feature of ``features`` (one line
    naming the setting and the set otherwise)."""
    meta = {"gt": 0, "length": features.n_features}
    try:
        return check(weights, list[float], meta, "feature_weights", lenient=lenient)
    except SettingError as exc:
        raise SettingError(
            f"{exc} (one per feature of {features.name}: {', '.join(features.names)})"
        ) from None


class Tokenizer:
    """A trained node tokenizer: feature set + standardizer + VQ-VAE + vocabulary, and for
    the tree feature set the root's own quantizer (:mod:`jetevo.tokenize.root`).

    ``floor_centroids`` (the k-means codebook, for the resolution floor) may come as a
    tensor from a checkpoint: it is kept as a numpy array."""

    def __init__(
        self,
        cfg: TokenizerConfig,
        standardizer: F.Standardizer,
        model,
        floor_centroids=None,
        root: RootQuantizer | None = None,
    ):
        self.cfg = cfg
        self.features: F.FeatureSet = F.feature_set(cfg.feature_set)
        if (root is None) != self.features.particles_only:
            raise SettingError(
                f"feature set {self.features.name} "
                + ("needs a root quantizer" if root is None else "has no root quantizer")
            )
        self.root = root
        self.standardizer = standardizer
        self.model = model.eval()
        self.vocab = Vocab(cfg.n_codes)
        self.floor_centroids: np.ndarray | None = (
            None if floor_centroids is None else _as_numpy(floor_centroids)
        )
        self._code_index: cKDTree | None = None
        self._decoded_codes: np.ndarray | None = None
        self.path: str | None = None

    @property
    def feature_set(self) -> str:
        """Name of the feature set (what the checkpoint records)."""
        return self.features.name

    # ------------------------------------------------------------- construction, I/O
    @staticmethod
    def build_model(cfg: TokenizerConfig):
        from jetevo.tokenize.vqvae import NodeVQVAE, VQVAEConfig

        return NodeVQVAE(
            VQVAEConfig(
                n_features=F.feature_set(cfg.feature_set).n_features,
                n_codes=cfg.n_codes,
                hidden=cfg.hidden,
                n_layers=cfg.n_layers,
                commitment_weight=cfg.commitment_weight,
                ema_decay=cfg.ema_decay,
                dead_code_fraction=cfg.dead_code_fraction,
            )
        )

    def state(self, extra: dict | None = None) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "feature_set": self.features.name,
            "features": list(self.features.names),
            "config": asdict(self.cfg),
            "standardizer": self.standardizer.state(),
            "model": self.model.state_dict(),
            "floor_centroids": self.floor_centroids,
            "root": None if self.root is None else self.root.state(),
            "identity": self.identity,
            **(extra or {}),
        }

    @property
    def identity(self) -> str:
        """Hash of everything that fixes the token <-> kinematics map."""
        import torch

        h = hashlib.sha256()
        h.update(self.features.name.encode())
        h.update(
            np.asarray(
                self.standardizer.state()["mean"]
                + self.standardizer.state()["std"]
                + self.standardizer.state()["weight"]
            ).tobytes()
        )
        for k, v in sorted(self.model.state_dict().items()):
            if torch.is_tensor(v) and (k.startswith(("encoder", "decoder")) or k == "vq.embed"):
                h.update(v.detach().cpu().numpy().tobytes())
        if self.root is not None:
            h.update(self.root.log_pt.tobytes() + self.root.log_mass.tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        ckpt.write_checkpoint(self.state(extra), path, CHECKPOINT_KIND, CHECKPOINT_VERSION)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        state = read_checkpoint(path)
        tok = cls.from_state(state, path)
        tok.path = str(path)
        return tok

    @classmethod
    def from_state(cls, state: dict, path: str | Path = "<memory>") -> Tokenizer:
        retired = F.RETIRED_FEATURE_SETS.get(str(state.get("feature_set")))
        if retired is not None:
            raise InputError(
                path, f"tokenizer of the retired representation {state['feature_set']}: {retired}"
            )
        known = F.FEATURE_SETS.get(str(state.get("feature_set")))
        if known is None or list(state.get("features") or ()) != list(known.names):
            raise InputError(
                path,
                f"tokenizer was trained on feature set {state.get('feature_set')!r}; this jetevo "
                f"knows {', '.join(map(repr, F.FEATURE_SETS))}",
            )
        try:
            tok = cls._from_state(state, path)
        except (KeyError, TypeError, AttributeError, RuntimeError, IndexError, SettingError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(path, f"damaged tokenizer checkpoint ({first})") from None
        recorded = state.get("identity")
        if recorded is not None and tok.identity != recorded:
            raise InputError(
                path, "damaged tokenizer checkpoint: its weights are not those it records"
            )
        return tok

    @classmethod
    def _from_state(cls, state: dict, path: str | Path) -> Tokenizer:
        # checkpoints from before the first-split share were trained without it, those from
        # before feature sets were selectable on the (recorded) parent-relative set
        saved = {"first_split_fraction": 0.0, "feature_set": state["feature_set"]}
        saved.update(state["config"])
        saved.pop("root_fraction", None)  # flat tokenizers from before roots had their own grid
        try:
            cfg = TokenizerConfig.from_dict(saved)
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"bad tokenizer config in the checkpoint ({exc})") from None
        if cfg.feature_set != state["feature_set"]:
            raise InputError(
                path,
                f"damaged tokenizer checkpoint: its config says feature set {cfg.feature_set}, "
                f"its features {state['feature_set']}",
            )
        model = cls.build_model(cfg)
        embed = state["model"].get("vq.embed")
        if embed is None or embed.shape[-2] != cfg.n_codes:
            raise InputError(
                path, f"codebook size in the weights does not match the config ({cfg.n_codes})"
            )
        model.load_state_dict(state["model"])
        s = state["standardizer"]
        root = state.get("root")
        return cls(
            cfg,
            F.Standardizer(s["mean"], s["std"], s["weight"]),
            model,
            state.get("floor_centroids"),
            None if root is None else RootQuantizer.from_state(root),
        )

    # ------------------------------------------------------------- token <-> features
    def _latent(self, f: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.as_tensor(self.standardizer.forward(f), dtype=torch.float32)
            return self.model.encoder(x).numpy()

    def _nearest_code(self, z: np.ndarray) -> np.ndarray:
        from scipy.spatial import cKDTree

        if self._code_index is None:
            self._code_index = cKDTree(
                self.model.codebook.detach().cpu().numpy().astype(np.float64), leafsize=8
            )
        return self._code_index.query(z, k=1, workers=-1)[1].astype(np.int64)

    def codes_from_features(self, f: np.ndarray) -> np.ndarray:
        """Codebook index of each feature row (exact nearest code, like the quantizer)."""
        return self._nearest_code(self._latent(f))

    def features_from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Decoded features of codes: a code always decodes to the same vector, so the
        decoder runs once per code and decoding is a table lookup."""
        import torch

        if self._decoded_codes is None:
            with torch.no_grad():
                all_codes = torch.arange(self.cfg.n_codes)
                self._decoded_codes = self.standardizer.inverse(
                    self.model.decode_codes(all_codes).numpy()
                )
        return self._decoded_codes[np.asarray(codes, np.int64)]

    # ------------------------------------------------------------- public API
    def encode(self, p: np.ndarray, parent: np.ndarray | None, is_leaf: np.ndarray) -> np.ndarray:
        """Tokens of nodes with four-momenta ``p`` (n, 4), reference four-momenta ``parent``
        (n, 4) and leaf flags. The reference is the node's parent (tree set; NaN rows or
        ``None`` mark roots, which take root codes) or its jet axis (flat set; NaN rows or
        ``None``: the jet frame)."""
        p = _check_p(p, "node four-momenta")
        ctx = self._context(parent, len(p))
        return self.vocab.token(self._codes(p, ctx), is_leaf)

    def decode(self, tokens: np.ndarray, parent: np.ndarray | None = None) -> np.ndarray:
        """Four-momenta (n, 4) of node tokens alone: roots (tree set: ``parent`` ``None``
        or NaN rows), in the jet frame, or particles of the flat set relative to their jet
        axes as in :meth:`encode` (massless). A tree set's child is decoded with its
        sibling: :meth:`decode_split`."""
        tokens = self._node_tokens(tokens)
        ctx = self._context(parent, len(tokens))
        codes = self.vocab.code(tokens)
        if self.root is None:
            inverse = cast(Callable, self.features.inverse)
            return inverse(self.features_from_codes(codes), ctx)
        if not np.all(np.isnan(ctx[:, 0])):
            raise SettingError(
                "decode() decodes roots of a tree tokenizer; a child is decoded together "
                "with its sibling (decode_split)"
            )
        return self.root.decode(codes)

    def decode_split(
        self, parent: np.ndarray, left: np.ndarray, right: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Four-momenta (n, 4) of the children with tokens ``left`` and ``right`` of
        parents of four-momenta ``parent`` (n, 4): they add up to their parent exactly
        (:func:`jetevo.tokenize.features.decode_split`; tree feature set only)."""
        if self.features.split_inverse is None:
            raise SettingError(f"feature set {self.features.name} has no splits to decode")
        parent = _check_p(parent, "parent four-momenta")
        left, right = self._node_tokens(left), self._node_tokens(right)
        if not len(parent) == len(left) == len(right):
            raise SettingError("decode_split takes as many left and right tokens as parents")
        return self.features.split_inverse(
            parent,
            self.features_from_codes(self.vocab.code(left)),
            self.features_from_codes(self.vocab.code(right)),
        )

    def encode_trees(self, trees: ak.Array) -> np.ndarray:
        """Flat tokens of every node of a tree batch (pre-order, as stored), each relative
        to its parent (tree set; roots on their own grid) or to its jet's root (flat set;
        internal nodes too)."""
        a = F.node_arrays(trees)
        a["p"] = self.features.node_momenta(a)
        codes = self._codes(a["p"], self.features.tree_context(a), a["counts"])
        return self.vocab.token(codes, a["is_leaf"])

    def root_code_log_pt(self) -> np.ndarray | None:
        """log pT (GeV) that every root code decodes to (``None`` for the flat set)."""
        return None if self.root is None else self.root.code_log_pt()

    def _codes(self, p: np.ndarray, ctx: np.ndarray, counts: np.ndarray | None = None):
        """Codes of nodes ``p`` with context ``ctx``: roots (tree set: NaN context) from the
        root grid, every other node from the codebook."""
        codes = np.zeros(len(p), np.int64)
        is_root = np.isnan(ctx[:, 0]) if self.root is not None else np.zeros(len(p), bool)
        if is_root.any():
            codes[is_root] = cast(RootQuantizer, self.root).encode(p[is_root])
        rest = ~is_root
        if rest.any():
            f = self.features.forward(p[rest], ctx[rest])
            bad = ~np.all(np.isfinite(f), axis=1)
            if np.any(bad):  # finite but absurd kinematics (1e38 GeV) overflow the features
                row = int(np.flatnonzero(rest)[np.flatnonzero(bad)[0]])
                jet = (
                    np.searchsorted(np.cumsum(counts), row, side="right")
                    if counts is not None
                    else None
                )
                where = f"row {row}" if jet is None else f"jet {int(jet)}"
                raise SettingError(f"node kinematics out of range in {where}")
            codes[rest] = self.codes_from_features(f)
        return codes

    def _node_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, np.int64)
        if not np.all(self.vocab.is_node(tokens)):
            raise SettingError("decoding takes node tokens only (no START/STOP/PAD)")
        return tokens

    def _context(self, parent: np.ndarray | None, n: int) -> np.ndarray:
        if parent is not None:
            parent = _check_p(parent, "parent four-momenta", allow_nan_rows=True)
        return self.features.context(parent, n)


def _as_numpy(x) -> np.ndarray:
    """A numpy copy of an array or a (CPU) tensor."""
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def _check_p(p, what: str, allow_nan_rows: bool = False) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or p.shape[1] != 4:
        raise SettingError(f"{what} must have shape (n, 4), got {p.shape}")
    if len(p) == 0:
        raise SettingError(f"{what}: empty input")
    bad = ~np.isfinite(p)
    if allow_nan_rows:
        bad &= ~np.all(np.isnan(p), axis=1, keepdims=True)
    if np.any(bad):
        raise SettingError(
            f"{what}: non-finite values in row {int(np.flatnonzero(bad.any(axis=1))[0])}"
        )
    return p


def read_checkpoint(path: str | Path) -> dict:
    """Load a tokenizer checkpoint (older formats brought up to date, arrays as tensors);
    one-line errors for anything else."""
    return ckpt.read_checkpoint(
        path, CHECKPOINT_KIND, CHECKPOINT_VERSION, MIGRATIONS, "tokenizer checkpoint"
    )
