"""Streaming training data (jetevo.model.streaming): every jet exactly once per epoch over
processes x workers, the same sequences as the in-memory builders, seeded orders, resumes
that skip exactly what was done, compact storage, fixed validation jets, one-line errors."""

from __future__ import annotations

import itertools

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jetevo.errors import InputError, SettingError
from jetevo.model.baselines import CountBaselines
from jetevo.model.sequences import FlatSequences, TreeSequences
from jetevo.model.streaming import (
    CheckedBatches,
    Layout,
    SequenceBuilder,
    StreamingDataset,
    TokenSource,
    sample_units,
    validation_batches,
)
from jetevo.model.train import training_statistics
from jetevo.tokenize.resolution import code_log_z, learn_scale
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import load

N_CODES = 64


@pytest.fixture(scope="module")
def uneven_tokens(token_dir, tmp_path_factory):
    """The tree token files rewritten with small row groups of three different sizes:
    units that divide evenly into nothing."""
    out = tmp_path_factory.mktemp("uneven_tokens")
    for f, rows in zip(sorted(token_dir.glob("*.parquet")), (7, 11, 13), strict=True):
        pq.write_table(pq.read_table(f), out / f.name, row_group_size=rows)
    return out


@pytest.fixture(scope="module")
def tree_builder(tiny_tokenizer) -> SequenceBuilder:
    return SequenceBuilder("tree", N_CODES, 128, code_log_z(tiny_tokenizer), 32)


def epoch_batches(ds: StreamingDataset, epoch: int) -> list[dict]:
    """One epoch of a process, its workers' batches in the order a DataLoader takes them."""
    per_worker = [list(ds.epoch(epoch, w)) for w in range(ds.layout.workers)]
    return [b for turn in itertools.zip_longest(*per_worker) for b in turn if b is not None]


def jet_ids(batches) -> list[int]:
    return [j for b in batches for j in b["jet"].tolist()]


def test_every_jet_exactly_once_per_epoch_over_ranks_and_workers(
    uneven_tokens, tree_builder, tiny_tokenizer
):
    source = TokenSource.of(uneven_tokens)
    assert len(source.units) == 6 + 3 + 4 and source.n_jets == 110  # 40, 30, 40 jets
    ref = TreeSequences(uneven_tokens, Vocab(N_CODES), 128, code_log_z(tiny_tokenizer), 32)
    for epoch in (0, 1):
        seen, steps = [], set()
        for rank in range(2):
            ds = StreamingDataset(source, tree_builder, 8, 10, seed=3, rank=rank, world=2,
                                  workers=2)  # fmt: skip
            batches = epoch_batches(ds, epoch)
            steps.add(len(batches))
            assert all(1 <= len(b["jet"]) <= 8 for b in batches)
            seen += jet_ids(batches)
            for b in batches[:3]:  # the canonical builder's sequences, padded as Collate does
                for i, j in enumerate(b["jet"].tolist()):
                    jet = ref.jet(j)
                    n = len(jet["tokens"])
                    for k in ref.fields:
                        assert b[k].dtype == torch.int64
                        assert np.array_equal(b[k][i, :n].numpy(), jet[k]), k
                        assert torch.all(b[k][i, n:] == ref.fill[k]), k
        assert sorted(seen) == list(range(110))  # every jet once, none dropped or repeated
        assert steps == {ds.layout.steps}  # the same number of steps on every process


def test_a_dataloader_takes_its_workers_batches_in_turn(uneven_tokens, tree_builder):
    """Real worker processes give what the layout says (resumes rely on the order)."""
    source = TokenSource.of(uneven_tokens)
    ds = StreamingDataset(source, tree_builder, 4, 10, seed=1, rank=1, world=2, workers=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = list(itertools.islice(iter(loader), 2 * ds.layout.steps))  # two epochs, endless
    assert jet_ids(got) == jet_ids(epoch_batches(ds, 0)) + jet_ids(epoch_batches(ds, 1))


def test_orders_are_seeded(uneven_tokens, tree_builder):
    source = TokenSource.of(uneven_tokens)

    def order(seed, epoch):
        return jet_ids(epoch_batches(StreamingDataset(source, tree_builder, 8, 25, seed), epoch))

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(1, 0) and order(0, 0) != order(0, 1)
    assert sorted(order(1, 0)) == sorted(order(0, 1)) == list(range(110))


def test_a_resume_continues_with_the_very_next_batches(uneven_tokens, tree_builder):
    """Started at (epoch, batches done), two real workers give the batches an
    uninterrupted stream gives from there, across the epoch's end."""
    source = TokenSource.of(uneven_tokens)
    ds = StreamingDataset(source, tree_builder, 3, 9, seed=2, rank=0, world=2, workers=2)
    steps = ds.layout.steps

    def stream(start: tuple[int, int], n: int) -> list[list[int]]:
        ds.start = start
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        return [b["jet"].tolist() for b in itertools.islice(iter(loader), n)]

    full = stream((4, 0), 2 * steps)
    for done in (1, steps - 1, steps + 2):
        assert stream((4 + done // steps, done % steps), 4) == full[done : done + 4]
    # within one reader, skipping k batches reads on exactly where it stopped
    whole = [b["jet"].tolist() for b in ds.epoch(7, 1)]
    for skip in range(len(whole) + 1):
        assert [b["jet"].tolist() for b in ds.epoch(7, 1, skip)] == whole[skip:]


def test_layout_keeps_steps_equal_and_batches_full_enough():
    for n, world, workers, batch in [(103, 4, 3, 5), (110, 2, 2, 55), (7, 3, 4, 64), (9, 2, 1, 1)]:
        lay = Layout.of(n, world, workers, batch)
        assert lay.steps % lay.workers == 0 and lay.workers <= max(1, workers)
        spans = []
        for rank in range(world):
            sizes = np.diff(lay.batch_bounds(rank))
            assert len(sizes) == lay.steps and sizes.min() >= 1
            assert sizes.max() <= max(batch, 2)  # batch 1 over uneven processes: one pair
            spans.append(lay.rank_range(rank))
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # workers read equal blocks of steps, rounded up by at most an eighth, else fewer read
    assert Layout.of(10_000, 2, 4, 64) == Layout(10_000, 2, 4, 80)  # 79 steps -> 80
    assert Layout.of(1_100, 1, 8, 64) == Layout(1_100, 1, 6, 18)  # 18 steps: not 24
    assert Layout.of(7, 3, 4, 64) == Layout(7, 3, 1, 1)
    with pytest.raises(SettingError, match=r"1 training jet\(s\) cannot feed 2 processes"):
        Layout.of(1, 2, 1, 8)


def test_flat_mode_streams_the_flat_sequences(flat_token_dir, flat_tokenizer):
    builder = SequenceBuilder("flat", N_CODES, 8)  # short: cut jets have no STOP target
    source = TokenSource.of(flat_token_dir)
    ref = FlatSequences(flat_token_dir, Vocab(N_CODES), 8)
    assert ref.truncated > 0
    ds = StreamingDataset(source, builder, 16, 30, seed=0)
    batches = epoch_batches(ds, 0)
    assert sorted(jet_ids(batches)) == list(range(source.n_jets))
    for b in batches:
        for i, j in enumerate(b["jet"].tolist()):
            jet = ref.jet(j)
            n = len(jet["tokens"])
            assert np.array_equal(b["tokens"][i, :n].numpy(), jet["tokens"])
            assert np.array_equal(b["target"][i, :n].numpy(), jet["target"])
    # the cut jets' last positions predict nothing, and the baselines leave them out
    baselines, resolution, jets = training_statistics(source, builder, flat_tokenizer, 10**6, 0)
    assert resolution is None and jets == source.n_jets
    targets = ref.target[ref.target != -100]
    assert baselines.bigram.sum() == len(targets)


def test_sequences_are_stored_compactly(uneven_tokens, tree_builder):
    source = TokenSource.of(uneven_tokens)
    store = tree_builder.read(source, range(len(source.units)), 0, source.n_jets)
    kinds = {k: v.dtype for k, v in store.fields.items()}
    # 131 tokens and IGNORE, depths up to max_len + 1 = 129: int16; sides, 32 scale bins: int8
    assert kinds == {"tokens": np.int16, "depth": np.int16, "side": np.int8, "scale": np.int8,
                     "left": np.int16, "right": np.int16}  # fmt: skip
    positions, n = int(store.offsets[-1]), len(store)
    assert store.nbytes == 10 * positions + 8 * (n + 1) + 8 * n  # int64: 48 bytes a position


def test_validation_is_the_first_jets_whatever_the_processes(uneven_tokens, tree_builder):
    source = TokenSource.of(uneven_tokens)
    for world in (1, 2, 3):
        jets = []
        for rank in range(world):
            val = validation_batches(source, tree_builder, 50, 8, rank, world)
            jets += [j for i in range(len(val)) for j in val[i]["jet"].tolist()]
        assert jets == list(range(50))
    # an empty share would leave one process out of the validation reduction (a hang)
    with pytest.raises(SettingError, match="every process needs one"):
        validation_batches(source, tree_builder, 1, 8, 0, 2)


def test_statistics_of_a_small_run_are_those_of_all_its_jets(
    uneven_tokens, tree_builder, tiny_tokenizer
):
    source = TokenSource.of(uneven_tokens)
    baselines, resolution, jets = training_statistics(
        source, tree_builder, tiny_tokenizer, 1000, seed=0
    )
    vocab = Vocab(N_CODES)
    seqs = TreeSequences(uneven_tokens, vocab, 128, code_log_z(tiny_tokenizer), 32)
    whole = CountBaselines.fit(*seqs.pairs(), vocab.n_node_tokens, vocab.size, seed=0)
    assert jets == 110 and baselines.lam == whole.lam
    assert np.array_equal(baselines.unigram, whole.unigram)
    assert (baselines.bigram != whole.bigram).nnz == 0
    trees = load(uneven_tokens, columns=["token", "parent", "depth"])
    counts = ak.to_numpy(ak.num(trees["token"], axis=1))
    first = np.repeat(np.cumsum(counts) - counts, counts)
    tok, parent, depth = (ak.to_numpy(ak.flatten(trees[k])) for k in ("token", "parent", "depth"))
    scale = learn_scale(tiny_tokenizer, tok, np.where(parent >= 0, first + parent, -1), depth)
    assert resolution is not None and resolution["log_pt_min"] == scale
    # a large one's: whole row groups of several files, drawn in a seeded order
    assert sample_units(source, 1000, 0) == list(range(len(source.units)))
    units = sample_units(source, 30, 0)
    assert units == sorted(units) and sum(source.units[u].rows for u in units) >= 30
    assert len({source.units[u].file for u in units}) > 1
    assert training_statistics(source, tree_builder, tiny_tokenizer, 30, seed=0)[2] == 30


def test_bad_jets_in_a_worker_are_one_line_errors(uneven_tokens, tiny_tokenizer):
    builder = SequenceBuilder("tree", N_CODES, 4, code_log_z(tiny_tokenizer), 32)
    ds = StreamingDataset(TokenSource.of(uneven_tokens), builder, 8, 20, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    with pytest.raises(InputError, match=r"jet\(s\) need more than max_len=4") as err:
        next(iter(CheckedBatches(loader)))
    assert "\n" not in str(err.value) and ".parquet" in str(err.value)


def test_an_interrupted_run_reads_on_as_if_uninterrupted(token_dir, tmp_path, monkeypatch):
    """Through Lightning's checkpoint: stopped at step 4 and resumed, a run trains on the
    batches of the run that was not stopped (an epoch is 3 steps: it crosses two)."""
    from jetevo.cli import main
    from jetevo.model.training_module import TrainingModule

    seen: list[list[int]] = []
    step = TrainingModule.training_step

    def spy(self, batch, i):
        seen.append(batch["jet"].tolist())
        return step(self, batch, i)

    monkeypatch.setattr(TrainingModule, "training_step", spy)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: {n_layer: 1, n_head: 2, n_embd: 16}\n"
        "train: {max_steps: 8, batch_size: 40, val_every: 2, val_batches: 1, shuffle_buffer: 30}\n"
    )

    def run(out, *overrides):
        args = ["train", "--config", str(cfg), "--train", str(token_dir), "--val", str(token_dir)]
        assert main([*args, "--out", str(tmp_path / out), "--quiet", *overrides]) == 0

    run("whole")
    whole = list(seen)
    assert len(whole) == 8 and sorted(j for b in whole[:3] for j in b) == list(range(110))
    seen.clear()
    run("stopped", "train.max_steps=4")
    run("stopped")
    assert seen == whole


def test_a_file_damaged_inside_is_a_one_line_error(token_dir, tree_builder, tmp_path):
    """Its footer reads (the plan is made), its pages do not: refused when read."""
    f = sorted(token_dir.glob("*.parquet"))[0]
    meta = pq.ParquetFile(f).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns)
                 if meta.column(i).path_in_schema.startswith("left"))  # fmt: skip
    data = bytearray(f.read_bytes())
    start = chunk.data_page_offset + 40
    data[start : start + 400] = bytes(range(256)) + bytes(144)  # garbage in its pages
    (tmp_path / f.name).write_bytes(bytes(data))
    source = TokenSource.of(tmp_path)
    with pytest.raises(InputError) as err:
        tree_builder.read(source, range(len(source.units)), 0, source.n_jets)
    assert str(err.value).startswith(str(tmp_path / f.name)) and "\n" not in str(err.value)
