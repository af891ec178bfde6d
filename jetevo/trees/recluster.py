"""kt reclustering of whole chunks of jets into declustering trees (the fast path).

One awkward multi-event ``fastjet.ClusterSequence`` per chunk runs the clustering in
C++; ``unique_history_order()`` hands the merge history to a numba kernel
(:mod:`jetevo.trees.kernel`) that builds the trees. No Python loop runs per jet.

Every constituent ends up in exactly one tree. kt's pairwise merge order does not
depend on R, so we cluster with :data:`CLUSTER_R`, a radius no pair of constituents
reaches: the whole jet then becomes one tree. Whether kt at the analysis radius ``R``
would have split the jet into several inclusive jets is decided exactly by the kernel,
and the ``on_split`` policy says what to do about it:

- ``merge`` (default): keep the one tree with all constituents; count the jet as split;
- ``hardest``: keep the tree of the hardest inclusive jet at ``R``; count lost constituents;
- ``drop``: drop the jet; count it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import awkward as ak
import numpy as np
import pyarrow as pa

from jetevo.errors import InputError, SettingError
from jetevo.kinematics import ALL_IN_ONE_R, JET_R
from jetevo.trees.format import NODE_INT_FIELDS, JetColumns, Topology
from jetevo.trees.kernel import (
    JET_EMPTY,
    JET_NEGATIVE_ENERGY,
    JET_NON_FINITE,
    JET_OK,
    JET_ONLY_BEAM,
    JET_UNPHYSICAL,
    SCHEME_E,
    SCHEME_WTA_PT,
    STATUS_OK,
    build_trees,
    prepare_constituents,
)
from jetevo.trees.writer import tree_table

CLUSTER_R = ALL_IN_ONE_R
SCHEMES = {"E": SCHEME_E, "wta_pt": SCHEME_WTA_PT}
ON_SPLIT = ("merge", "hardest", "drop")
PRECISIONS = ("float32", "float64")
SKIP_CODES = {
    "no_constituents": JET_EMPTY,
    "non_finite": JET_NON_FINITE,
    "negative_energy": JET_NEGATIVE_ENERGY,
    "only_beam_constituents": JET_ONLY_BEAM,
    "unphysical_constituent": JET_UNPHYSICAL,
}
SKIP_REASONS = tuple(SKIP_CODES)
FORMAT_NAME = "jetevo-trees"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReclusterConfig:
    """How jets become trees; stored in every output file's metadata."""

    R: float = JET_R
    scheme: str = "E"
    on_split: str = "merge"
    max_constituents: int = 128
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise SettingError(f"scheme must be one of {sorted(SCHEMES)}, got {self.scheme!r}")
        if self.on_split not in ON_SPLIT:
            raise SettingError(f"on_split must be one of {ON_SPLIT}, got {self.on_split!r}")
        if not 0.0 < self.R < CLUSTER_R:
            raise SettingError(f"R must be in (0, {CLUSTER_R}), got {self.R}")
        if self.max_constituents < 1:
            raise SettingError("max_constituents must be >= 1")
        if self.precision not in PRECISIONS:
            raise SettingError("precision must be float32 or float64")

    def metadata(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "algorithm": "kt",
            "cluster_R": CLUSTER_R,
            "order": "depth-first pre-order, root first, larger-pT child left",
            **asdict(self),
        }


def _jagged_for_fastjet(px, py, pz, E, offsets) -> ak.Array:
    content = ak.contents.RecordArray(
        [ak.contents.NumpyArray(x) for x in (px, py, pz, E)],
        ["px", "py", "pz", "E"],
        parameters={"__record__": "Momentum4D"},
    )
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))


def _flat_offsets(array: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    counts = ak.to_numpy(ak.num(array, axis=1)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ak.to_numpy(ak.flatten(array, axis=1)), offsets


def _history(px, py, pz, E, offsets, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """FastJet kt at CLUSTER_R over a whole chunk; its flat unique_history_order + offsets."""
    import fastjet

    cs = fastjet.ClusterSequence(
        _jagged_for_fastjet(px, py, pz, E, offsets), _jet_definition(CLUSTER_R, scheme)
    )
    return _flat_offsets(cs.unique_history_order())


def _trees(
    px, py, pz, E, offsets, hist, hist_offsets, scheme: str, r_split: float, jets=None
) -> dict:
    """Trees of a chunk from its FastJet history. A history that is not one binary tree
    (never seen once constituents along the beam are dropped) fails the chunk with the
    file and entry of the jet (``jets``: the chunk's :class:`JetColumns`)."""
    p, left, right, parent, depth, leaf, node_offsets, split, status = build_trees(
        px, py, pz, E, offsets, hist, hist_offsets, SCHEMES[scheme], r_split
    )
    if np.any(status != STATUS_OK):
        bad = int(np.flatnonzero(status != STATUS_OK)[0])
        problem = "FastJet's clustering history is not a single binary tree"
        if jets is None:
            raise RuntimeError(f"jet {bad} of a re-clustered chunk: {problem}")
        source = jets.source_names[int(jets.source_codes[bad])]
        raise InputError(source, f"entry {int(jets.entry[bad])}: {problem}")
    return {
        "p": p, "left": left, "right": right, "parent": parent, "depth": depth,
        "leaf_index": leaf, "node_offsets": node_offsets, "split": split,
    }  # fmt: skip


def cluster_flat(px, py, pz, E, offsets, scheme: str, r_split: float) -> dict[str, np.ndarray]:
    """Cluster every jet (flat float64 arrays + offsets, >= 1 constituent each) into a tree."""
    hist, hist_offsets = _history(px, py, pz, E, offsets, scheme)
    return _trees(px, py, pz, E, offsets, hist, hist_offsets, scheme, r_split)


def _jet_definition(R: float, scheme: str):
    """kt at radius R with FastJet's N2Plain strategy.

    For jets of up to a few hundred constituents, and at CLUSTER_R where one tile holds the
    whole jet, N2Plain clustered top jets faster than the strategy "Best" picks
    (docs/benchmarks.md). The clustering, and so the history, is the same.
    The Python binding takes (algorithm, R, strategy, scheme) in that order.
    """
    import fastjet

    recombination = fastjet.E_scheme if scheme == "E" else fastjet.WTA_pt_scheme
    return fastjet.JetDefinition(fastjet.kt_algorithm, R, fastjet.N2Plain, recombination)


def _hardest_subsets(
    px, py, pz, E, offsets, R: float, scheme: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (within each jet, ascending = pT order) of the hardest inclusive kt jet at R."""
    import fastjet

    cs = fastjet.ClusterSequence(
        _jagged_for_fastjet(px, py, pz, E, offsets), _jet_definition(R, scheme)
    )
    jets = cs.inclusive_jets()
    hardest = ak.argmax(jets.px**2 + jets.py**2, axis=1, keepdims=True)
    idx = ak.sort(ak.flatten(cs.constituent_index(0.0)[hardest], axis=1), axis=1)
    return _flat_offsets(idx)


@dataclass
class ChunkInProgress:
    """A chunk of jets between the three steps of :func:`recluster_chunk`.

    The steps are separate so that a pipeline can run FastJet, which holds the GIL for its
    whole call, on one chunk while another thread builds and encodes the trees of the
    previous one (numba and Arrow release the GIL).
    """

    jets: JetColumns  # of the jets kept (not skipped)
    cols: dict[str, np.ndarray]  # their pT-ordered, capped constituents (float64, flat)
    offsets: np.ndarray
    counts: Counter
    hist: np.ndarray | None = None  # FastJet's unique_history_order, flat, and its offsets
    hist_offsets: np.ndarray | None = None


def prepare_chunk(jets: ak.Array, cfg: ReclusterConfig) -> ChunkInProgress:
    """Check, order and cap the constituents; skip bad jets (counted)."""
    counts: Counter = Counter(jets_read=len(jets))
    flat = {}
    for k in ("px", "py", "pz", "E"):
        flat[k], offsets = _flat_offsets(jets[k])
    px, py, pz, E, offsets, status, truncated, beam = prepare_constituents(
        flat["px"], flat["py"], flat["pz"], flat["E"], offsets, cfg.max_constituents
    )
    for reason, code in SKIP_CODES.items():
        counts[f"skipped_{reason}"] += int(np.count_nonzero(status == code))
    keep = status == JET_OK
    offsets = np.concatenate([[0], offsets[1:][keep]])  # skipped jets hold no constituents
    counts["truncated_jets"] += int(np.count_nonzero(truncated))
    counts["truncated_constituents"] += int(truncated.sum())
    counts["beam_constituents"] += int(beam[keep].sum())
    cols = {"px": px, "py": py, "pz": pz, "E": E}
    return ChunkInProgress(JetColumns.of(jets).select(keep), cols, offsets, counts)


def cluster_chunk(chunk: ChunkInProgress, cfg: ReclusterConfig) -> ChunkInProgress:
    """Run FastJet over the prepared chunk; attach its history."""
    cols = chunk.cols
    chunk.hist, chunk.hist_offsets = _history(
        cols["px"], cols["py"], cols["pz"], cols["E"], chunk.offsets, cfg.scheme
    )
    return chunk


def finish_chunk(chunk: ChunkInProgress, cfg: ReclusterConfig) -> tuple[pa.Table, Counter]:
    """Trees from the FastJet history, the on-split policy, and the output table."""
    counts, cols, offsets, jets = Counter(chunk.counts), chunk.cols, chunk.offsets, chunk.jets
    trees = _trees(
        cols["px"], cols["py"], cols["pz"], cols["E"], offsets,
        chunk.hist, chunk.hist_offsets, cfg.scheme, cfg.R, jets,
    )  # fmt: skip
    split = trees["split"]
    counts["split_jets"] += int(split.sum())
    if cfg.on_split == "drop" and split.any():
        counts["dropped_split"] += int(split.sum())
        trees = _select_jets(trees, ~split)
        jets = jets.select(~split)
    elif cfg.on_split == "hardest" and split.any():
        trees = _replace_by_hardest(trees, cols, offsets, split, cfg, counts)

    table = _to_table(trees, jets, cfg)
    counts["trees_written"] += table.num_rows
    return table, counts


def recluster_chunk(jets: ak.Array, cfg: ReclusterConfig) -> tuple[pa.Table, Counter]:
    """Turn one chunk of jets (reader common form) into a table of trees, with counts."""
    return finish_chunk(cluster_chunk(prepare_chunk(jets, cfg), cfg), cfg)


def _select_jets(trees: dict, mask: np.ndarray) -> dict:
    """Keep the trees of jets where ``mask`` is true (flat arrays re-sliced)."""
    off = trees["node_offsets"]
    node_mask = np.repeat(mask, np.diff(off))
    out = {k: v[node_mask] for k, v in trees.items() if k not in ("node_offsets", "split")}
    new_off = np.zeros(int(mask.sum()) + 1, np.int64)
    np.cumsum(np.diff(off)[mask], out=new_off[1:])
    out["node_offsets"] = new_off
    out["split"] = trees["split"][mask]
    return out


def _replace_by_hardest(trees, cols, offsets, split, cfg, counts) -> dict:
    """Re-cluster split jets from the constituents of their hardest inclusive jet at R."""
    jet_ids = np.flatnonzero(split)
    starts, ends = offsets[:-1][jet_ids], offsets[1:][jet_ids]
    gather = segment_indices(starts, ends - starts)
    sub_off = np.zeros(len(jet_ids) + 1, np.int64)
    np.cumsum(ends - starts, out=sub_off[1:])
    sub = {k: cols[k][gather] for k in ("px", "py", "pz", "E")}
    keep_idx, keep_off = _hardest_subsets(
        sub["px"], sub["py"], sub["pz"], sub["E"], sub_off, cfg.R, cfg.scheme
    )
    base = np.repeat(sub_off[:-1], np.diff(keep_off))
    pick = base + keep_idx
    counts["hardest_lost_constituents"] += int((ends - starts).sum() - len(pick))
    px, py, pz, E = (sub[k][pick] for k in ("px", "py", "pz", "E"))
    re = cluster_flat(px, py, pz, E, keep_off, cfg.scheme, cfg.R)
    # leaf_index must point into the jet's original pT-ordered constituents
    leaf = re["leaf_index"]
    is_leaf = leaf >= 0
    node_jet = np.repeat(np.arange(len(jet_ids)), np.diff(re["node_offsets"]))
    leaf[is_leaf] = keep_idx[keep_off[node_jet[is_leaf]] + leaf[is_leaf]]

    kept = _select_jets(trees, ~split)
    order = np.argsort(np.concatenate([np.flatnonzero(~split), jet_ids]), kind="stable")
    merged = {}
    sizes = np.concatenate([np.diff(kept["node_offsets"]), np.diff(re["node_offsets"])])
    starts_all = np.concatenate(
        [kept["node_offsets"][:-1], len(kept["left"]) + re["node_offsets"][:-1]]
    )
    node_order = segment_indices(starts_all[order], sizes[order])
    for k in ("p", *NODE_INT_FIELDS):
        merged[k] = np.concatenate([kept[k], re[k]])[node_order]
    merged["node_offsets"] = np.zeros(len(order) + 1, np.int64)
    np.cumsum(sizes[order], out=merged["node_offsets"][1:])
    merged["split"] = np.concatenate([kept["split"], re["split"]])[order]
    return merged


def segment_indices(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    sizes = np.asarray(sizes, np.int64)
    if sizes.sum() == 0:
        return np.zeros(0, np.int64)
    shift = np.asarray(starts, np.int64) - (np.cumsum(sizes) - sizes)
    return np.repeat(shift, sizes) + np.arange(int(sizes.sum()))


def _to_table(trees: dict, jets: JetColumns, cfg: ReclusterConfig) -> pa.Table:
    """The chunk's trees as a tree table."""
    topology = Topology(
        trees["left"], trees["right"], trees["parent"], trees["depth"], trees["node_offsets"]
    )
    return tree_table(
        trees["p"], topology, trees["leaf_index"], jets, cfg.metadata(), cfg.precision
    )
