"""Streaming training data: jets read from Parquet token files a slice at a time, so that a
process's memory does not grow with the data (the AOJ pretraining set has 178M jets).

- **Units.** A unit is one row group of one token file. It is read in record batches of
  :data:`READ_ROWS` jets (``pq.ParquetFile.iter_batches``), never as a whole file, and each
  record batch becomes sequences through the canonical builders
  (:meth:`jetevo.model.sequences.TreeSequences.from_columns`, ``FlatSequences``): the
  sequence rules have one home, whether the jets are streamed or loaded whole.
- **Epochs.** Every epoch permutes the units (seeded by ``seed`` and the epoch) and lays
  their jets end to end. Process ``r`` of ``R`` takes the contiguous jets
  ``[r N / R, (r + 1) N / R)`` of that sequence, and each DataLoader worker of a process a
  contiguous block of the process's batches. The readers' jets are disjoint and together
  are every jet exactly once per epoch; a unit that straddles two readers' ranges is read
  by both, each keeping its own rows.
- **Equal steps.** Under DDP every process must run the same number of steps. An epoch is
  S steps on every process: ``ceil(ceil(N / R) / batch_size)``, rounded up to a multiple
  of the workers by at most an eighth (fewer workers read when that is not enough), and
  each process spreads its jets evenly over its S batches. A batch holds at most
  ``batch_size`` jets (batch_size 1 over processes of unequal shares: one batch of 2);
  no jet is dropped or repeated to make the counts even.
- **Shuffle.** Each reader shuffles windows of ``shuffle_buffer`` consecutive jets of its
  range (seeded by the seed, the epoch and the window's position). Memory is bounded by
  the window, and the order is a function of the jet indices alone, so a resume skips what
  was done without reading it.
- **Compact.** Sequences are held in int8/int16/int32 arrays (the smallest that the
  vocabulary, ``max_len`` and ``scale_bins`` allow); only a collated batch is int64.
- **Validation.** The first jets of the validation files, in file order, split over the
  processes: the same jets at every validation, whatever the number of processes.

Nothing here imports Lightning: :mod:`jetevo.model.training_module` wires it in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from jetevo.errors import InputError, JetevoError, SettingError
from jetevo.model.sequences import (
    FLAT_COLUMNS,
    TREE_COLUMNS,
    FlatSequences,
    TreeSequences,
    token_file_info,
)
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import (
    REQUIRED_COLUMNS,
    STRUCTURE_COLUMNS,
    check_structure,
    read_metadata,
    read_schema,
)

READ_ROWS = 4096  # jets per Parquet record batch: bounds the Arrow and int64 temporaries


# ------------------------------------------------------------------ files and units
@dataclass(frozen=True)
class Unit:
    """One row group of one token file: ``rows`` jets, the first of them jet ``start`` of
    all the files in order."""

    file: int
    row_group: int
    start: int
    rows: int


def _parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not a readable Parquet file ({first})") from None


@dataclass(frozen=True)
class TokenSource:
    """Token files (one tokenizer) and their units, from the Parquet footers alone."""

    files: tuple[Path, ...]
    units: tuple[Unit, ...]
    tokenizer: dict

    @classmethod
    def of(cls, paths, what: str = "token files") -> TokenSource:
        files, info = token_file_info(paths)
        units: list[Unit] = []
        start = 0
        for i, f in enumerate(files):
            read_metadata(f)
            names = read_schema(f).names
            missing = [
                c for c in (*REQUIRED_COLUMNS, *STRUCTURE_COLUMNS, "token") if c not in names
            ]
            missing = list(dict.fromkeys(missing))
            if missing:
                raise InputError(f, f"missing tree column(s) {', '.join(missing)}")
            meta = _parquet(f).metadata
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    units.append(Unit(i, g, start, n))
                    start += n
        if not start:
            raise InputError(files[0], f"the {what} hold no jets")
        return cls(tuple(files), tuple(units), info)

    @property
    def n_jets(self) -> int:
        return self.units[-1].start + self.units[-1].rows

    def read(
        self, order: Sequence[int] | np.ndarray, lo: int, hi: int, columns: list[str]
    ) -> Iterator[tuple[pa.Table, str, int]]:
        """The jets ``[lo, hi)`` of the units ``order`` laid end to end, as tables of at most
        :data:`READ_ROWS` jets: ``(table, label for errors, index of its first jet)``."""
        rows = np.array([self.units[u].rows for u in order], np.int64)
        ends = np.cumsum(rows)
        i = int(np.searchsorted(ends, lo, side="right"))
        cached: tuple[int, pq.ParquetFile] | None = None
        while i < len(order) and ends[i] - rows[i] < hi:
            unit = self.units[order[i]]
            a = max(lo - int(ends[i] - rows[i]), 0)  # rows [a, b) of this unit
            b = min(hi - int(ends[i] - rows[i]), unit.rows)
            if cached is None or cached[0] != unit.file:
                cached = (unit.file, _parquet(self.files[unit.file]))
            path, pf = self.files[unit.file], cached[1]
            first = sum(pf.metadata.row_group(g).num_rows for g in range(unit.row_group))
            pos = 0
            for batch in _batches(pf, path, unit.row_group, columns):
                s, e = max(a - pos, 0), min(b - pos, batch.num_rows)
                if s < e:
                    # check_structure caches by file: a label that is no file keeps every
                    # slice checked (and names the slice in its errors)
                    label = f"{path} (jets counted from {first + pos + s})"
                    yield (
                        pa.Table.from_batches([batch.slice(s, e - s)]),
                        label,
                        unit.start + pos + s,
                    )
                pos += batch.num_rows
                if pos >= b:
                    break
            i += 1


def _batches(pf: pq.ParquetFile, path: Path, row_group: int, columns: list[str]):
    """The record batches of one row group; a damaged file is one :class:`InputError`."""
    try:
        yield from pf.iter_batches(
            batch_size=READ_ROWS, row_groups=[row_group], columns=columns, use_threads=False
        )
    except (OSError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"damaged Parquet file ({first})") from None


def node_columns(table: pa.Table, names: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Node counts per jet and the flat values of the list columns ``names``."""
    out = {}
    counts: np.ndarray = np.zeros(0, np.int64)
    for name in names:
        col = table.column(name).combine_chunks()
        if name == "token":
            counts = np.diff(np.asarray(col.offsets, np.int64))
        out[name] = col.flatten().to_numpy(zero_copy_only=False)
    return counts, out


# ------------------------------------------------------------------ compact sequences
def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the ranges ``[start, start + length)``, in order."""
    total = int(lengths.sum())
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


class JetStore:
    """Sequences of jets in compact arrays: per-position ``fields``, per-jet ``offsets`` and
    ``jets`` (each jet's index in file order); ``fill`` pads a batch."""

    def __init__(self, offsets: np.ndarray, fields: dict, jets: np.ndarray, fill: dict):
        self.offsets, self.fields, self.jets, self.fill = offsets, fields, jets, fill

    @classmethod
    def of(cls, seqs: TreeSequences | FlatSequences, dtypes: dict, jets: np.ndarray) -> JetStore:
        fields = {k: getattr(seqs, k).astype(dtypes[k]) for k in seqs.fields}
        return cls(seqs.offsets, fields, np.asarray(jets, np.int64), seqs.fill)

    @classmethod
    def concat(cls, stores: Sequence[JetStore]) -> JetStore:
        if len(stores) == 1:
            return stores[0]
        shift = np.cumsum([0] + [int(s.offsets[-1]) for s in stores[:-1]])
        offsets = np.concatenate(
            [stores[0].offsets[:1]]
            + [s.offsets[1:] + d for s, d in zip(stores, shift, strict=True)]
        )
        fields = {k: np.concatenate([s.fields[k] for s in stores]) for k in stores[0].fields}
        return cls(offsets, fields, np.concatenate([s.jets for s in stores]), stores[0].fill)

    def __len__(self) -> int:
        return len(self.jets)

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.jets.nbytes + sum(a.nbytes for a in self.fields.values())

    def take(self, idx: np.ndarray) -> JetStore:
        idx = np.asarray(idx, np.int64)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        src = _ranges(self.offsets[idx], lengths)
        offsets = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        fields = {k: v[src] for k, v in self.fields.items()}
        return JetStore(offsets, fields, self.jets[idx], self.fill)

    def batch(self, idx: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Jets ``idx`` (all by default) right-padded with each field's fill, int64, as
        :class:`jetevo.model.data.Collate` pads them; ``jet``: their indices."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, np.int64)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        t = int(lengths.max(initial=0))
        rows = np.repeat(np.arange(len(idx)), lengths)
        cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = np.repeat(self.offsets[idx], lengths) + cols
        out = {}
        for k, fill in self.fill.items():
            arr = np.full((len(idx), t), fill, np.int64)
            arr[rows, cols] = self.fields[k][src]
            out[k] = torch.from_numpy(arr)
        out["jet"] = torch.from_numpy(self.jets[idx])
        return out


def _int_type(lo: int, hi: int) -> type:
    for kind in (np.int8, np.int16, np.int32):
        if np.iinfo(kind).min <= lo and hi <= np.iinfo(kind).max:
            return kind
    return np.int64


class SequenceBuilder:
    """What a reader needs to turn a slice of token files into a mode's sequences
    (picklable, for DataLoader workers): the mode, the vocabulary size, ``max_len`` and,
    in tree mode, the codes' log z (the expansion order) and ``scale_bins``."""

    def __init__(
        self,
        mode: str,
        n_codes: int,
        max_len: int,
        code_log_z: np.ndarray | None = None,
        scale_bins: int = 0,
    ):
        self.mode, self.max_len = mode, max_len
        self.vocab = Vocab(n_codes)
        self.code_log_z, self.scale_bins = code_log_z, scale_bins
        self.node_columns = list(FLAT_COLUMNS if mode == "flat" else TREE_COLUMNS)
        # the structure columns are read for the tree-format check of every slice
        self.columns = list(dict.fromkeys([*self.node_columns, *STRUCTURE_COLUMNS]))
        token = _int_type(-100, self.vocab.size)  # node tokens, START/PAD, IGNORE targets
        self.dtypes = {"tokens": token, "left": token, "right": token, "target": token,
                       "depth": _int_type(0, max_len + 1), "side": np.int8,
                       "scale": _int_type(0, scale_bins)}  # fmt: skip

    def sequences(self, table: pa.Table, where: str) -> TreeSequences | FlatSequences:
        """The sequences of a table of jets (checked as a tree file), as training builds
        them; ``where`` names the jets in errors."""
        check_structure(Path(where), table)
        counts, nodes = node_columns(table, self.node_columns)
        if self.mode == "flat":
            return FlatSequences.from_columns(counts, nodes, where, self.vocab, self.max_len)
        return TreeSequences.from_columns(
            counts, nodes, where, self.vocab, self.max_len, self.code_log_z, self.scale_bins
        )

    def store(self, table: pa.Table, where: str, first: int) -> JetStore:
        seqs = self.sequences(table, where)
        return JetStore.of(seqs, self.dtypes, np.arange(first, first + len(seqs)))

    def stores(
        self, source: TokenSource, order: Sequence[int] | np.ndarray, lo: int, hi: int
    ) -> list[JetStore]:
        """The jets ``[lo, hi)`` of the units ``order`` laid end to end, in that order, a
        store per slice read."""
        return [self.store(*part) for part in source.read(order, lo, hi, self.columns)]

    def read(
        self, source: TokenSource, order: Sequence[int] | np.ndarray, lo: int, hi: int
    ) -> JetStore:
        """:meth:`stores` as one store."""
        stores = self.stores(source, order, lo, hi)
        return JetStore.concat(stores) if stores else self.empty()

    def empty(self) -> JetStore:
        kind = FlatSequences if self.mode == "flat" else TreeSequences
        fields: dict[str, np.ndarray] = {k: np.zeros(0, self.dtypes[k]) for k in kind.fields}
        return JetStore(np.zeros(1, np.int64), fields, np.zeros(0, np.int64),
                        kind.fill_values(self.vocab))  # fmt: skip


# ------------------------------------------------------------------ the epoch layout
@dataclass(frozen=True)
class Layout:
    """How an epoch's ``n_jets`` are split over ``world`` processes and ``workers`` readers
    per process, in ``steps`` steps per process (see the module docstring)."""

    n_jets: int
    world: int
    workers: int
    steps: int

    @classmethod
    def of(cls, n_jets: int, world: int, workers: int, batch_size: int) -> Layout:
        fewest, most = n_jets // world, -(-n_jets // world)
        if fewest < 1:
            raise SettingError(
                f"{n_jets} training jet(s) cannot feed {world} processes "
                "(train.devices x train.num_nodes)"
            )
        steps = min(-(-most // batch_size), fewest)  # no batch above batch_size, none empty
        # workers take equal blocks of steps: round the steps up to a multiple of the
        # workers by at most an eighth (batches that much smaller), or use fewer workers
        w = max(1, workers)
        while w > 1 and (w * -(-steps // w) - steps > steps // 8 or w * -(-steps // w) > fewest):
            w -= 1
        return cls(n_jets, world, w, w * -(-steps // w))

    def rank_range(self, rank: int) -> tuple[int, int]:
        return self.n_jets * rank // self.world, self.n_jets * (rank + 1) // self.world

    def batch_bounds(self, rank: int) -> np.ndarray:
        """Where each of the process's ``steps`` batches starts and ends (steps + 1 jets)."""
        lo, hi = self.rank_range(rank)
        return lo + np.arange(self.steps + 1, dtype=np.int64) * (hi - lo) // self.steps

    def worker_bounds(self, rank: int, worker: int) -> np.ndarray:
        """The bounds of worker ``worker``'s block of the process's batches."""
        per = self.steps // self.workers
        return self.batch_bounds(rank)[worker * per : (worker + 1) * per + 1]

    def done_by(self, worker: int, delivered: int) -> int:
        """Batches of an epoch that ``worker`` has made when the process has received
        ``delivered``: a DataLoader takes its workers' batches in turn."""
        return max(0, -(-(delivered - worker) // self.workers))


class StreamingDataset(torch.utils.data.IterableDataset):
    """Training batches of process ``rank`` of ``world``, read by ``workers`` DataLoader
    workers (``num_workers``, or 1 for reading in the training process), endless: epoch
    after epoch from ``start`` = (epoch, batches of it already done). Each item is a padded
    int64 batch (:meth:`JetStore.batch`) or, when the data are bad, ``{"error": (path,
    problem)}`` (:class:`CheckedBatches` raises it in the training process)."""

    def __init__(
        self,
        source: TokenSource,
        builder: SequenceBuilder,
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 1,
        start: tuple[int, int] = (0, 0),
    ):
        super().__init__()
        self.source, self.builder = source, builder
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.loader_workers = rank, max(1, workers)
        self.layout = Layout.of(source.n_jets, world, self.loader_workers, batch_size)
        self.start = start

    def unit_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.source.units))

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.loader_workers:
            raise RuntimeError("StreamingDataset: workers differs from the DataLoader's")
        if worker >= self.layout.workers:
            return  # more workers than the data can keep busy: this one makes nothing
        epoch, delivered = self.start
        # a DataLoader starts with its worker 0: after `delivered` batches the next one is
        # reader delivered % workers's, so loader worker i reads for reader i + delivered
        reader = (worker + delivered) % self.layout.workers
        try:
            while True:
                yield from self.epoch(epoch, reader, self.layout.done_by(reader, delivered))
                epoch, delivered = epoch + 1, 0
        except JetevoError as exc:
            path, problem = getattr(exc, "path", ""), getattr(exc, "problem", str(exc))
            yield {"error": (path, problem)}

    def epoch(self, epoch: int, worker: int, skip: int = 0) -> Iterator[dict]:
        """Worker ``worker``'s batches of ``epoch`` after its first ``skip``. One shuffle
        window is held at a time, as read (batches gather from it: no shuffled copy)."""
        bounds = self.layout.worker_bounds(self.rank, worker)
        if skip >= len(bounds) - 1:
            return
        lo, hi = int(bounds[0]), int(bounds[-1])
        order = self.unit_order(epoch)
        size, n = self.shuffle_buffer, hi - lo
        done = int(bounds[skip] - lo)  # jets of this reader's range already used
        drop = done % size  # ... in the window the resume starts in
        b, carry = skip, None  # carry: the last window's jets short of a batch
        for w0 in range(done - drop, n, size):
            window = Window(
                self.builder.stores(self.source, order, lo + w0, lo + min(w0 + size, n))
            )
            perm = np.random.default_rng([self.seed, epoch, lo + w0]).permutation(len(window))
            perm, drop, pos = perm[drop:], 0, 0
            while b + 1 < len(bounds):
                need = int(bounds[b + 1] - bounds[b]) - (len(carry) if carry is not None else 0)
                if need > len(perm) - pos:
                    break
                part = window.take(perm[pos : pos + need])
                yield (part if carry is None else JetStore.concat([carry, part])).batch()
                carry, pos, b = None, pos + need, b + 1
            if pos < len(perm):
                rest = window.take(perm[pos:])
                carry = rest if carry is None else JetStore.concat([carry, rest])
            del window  # before the next one is read


class Window:
    """The stores of one shuffle window, as read (concatenating them would hold the
    window twice); :meth:`take` gathers jets by their index in the window."""

    def __init__(self, stores: list[JetStore]):
        self.stores = stores
        self.starts = np.cumsum([0] + [len(s) for s in stores])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, idx: np.ndarray) -> JetStore:
        idx = np.asarray(idx, np.int64)
        seg = np.searchsorted(self.starts, idx, side="right") - 1
        by_seg = np.argsort(seg, kind="stable")
        parts = [
            self.stores[k].take(idx[seg == k] - self.starts[k]) for k in np.unique(seg[by_seg])
        ]
        merged = JetStore.concat(parts)  # jets in segment order: put them back in idx order
        return merged.take(np.argsort(by_seg))


class CheckedBatches:
    """The training loader's batches, with a reader's error raised here, in the training
    process, as the one-line :class:`InputError` it is (an exception in a DataLoader
    worker would arrive as a traceback)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            if "error" in batch:
                raise InputError(*batch["error"])
            yield batch


# ------------------------------------------------------------------ validation, statistics
class ValidationBatches(torch.utils.data.Dataset):
    """Fixed validation batches: the jets ``[lo, hi)`` of a source in file order (the
    process's share of the first validation jets), ``batch_size`` at a time."""

    def __init__(self, store: JetStore, batch_size: int):
        self.store, self.batch_size = store, batch_size

    def __len__(self) -> int:
        return -(-len(self.store) // self.batch_size)

    def __getitem__(self, i: int) -> dict:
        a = i * self.batch_size
        return self.store.batch(np.arange(a, min(a + self.batch_size, len(self.store))))


def validation_batches(
    source: TokenSource,
    builder: SequenceBuilder,
    n_jets: int,
    batch_size: int,
    rank: int,
    world: int,
) -> ValidationBatches:
    """Process ``rank``'s share of the first ``n_jets`` jets of ``source``. Every process
    needs one jet at least: one without validation batches would skip the reduction the
    others wait in."""
    n = min(n_jets, source.n_jets)
    if n < world:
        raise SettingError(
            f"validation: {n} jet(s) for {world} processes; every process needs one at least "
            "(more validation jets, or a larger train.val_batches)"
        )
    lo, hi = n * rank // world, n * (rank + 1) // world
    order = range(len(source.units))
    return ValidationBatches(builder.read(source, order, lo, hi), batch_size)


def sample_units(source: TokenSource, n_jets: int, seed: int) -> list[int]:
    """Units (in file order) that hold a sample of about ``n_jets`` jets: all of them when
    the source is that small, otherwise whole units drawn in a seeded order until they
    hold ``n_jets`` (spread over the files rather than the first ones)."""
    if source.n_jets <= n_jets:
        return list(range(len(source.units)))
    rows = np.array([u.rows for u in source.units])
    perm = np.random.default_rng([seed, 1 << 20]).permutation(len(rows))
    keep = perm[: int(np.searchsorted(np.cumsum(rows[perm]), n_jets)) + 1]
    return sorted(int(u) for u in keep)


def constituent_counts(source: TokenSource) -> Iterator[tuple[Path, np.ndarray]]:
    """Each file's constituents per jet (its ``n_constituents`` column, one small integer a
    jet), a record batch at a time."""
    for f in source.files:
        pf = _parquet(f)
        for row_group in range(pf.num_row_groups):
            for batch in _batches(pf, f, row_group, ["n_constituents"]):
                yield f, batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)


__all__ = [
    "READ_ROWS",
    "CheckedBatches",
    "JetStore",
    "Layout",
    "SequenceBuilder",
    "StreamingDataset",
    "TokenSource",
    "Unit",
    "ValidationBatches",
    "Window",
    "constituent_counts",
    "sample_units",
    "validation_batches",
]
