"""Batches of sequences built in memory (evaluation, scoring): a dataset over them and their
collation. Training streams its jets instead (:mod:`jetevo.model.streaming`, whose batches
are padded as :class:`Collate` pads).

Both are module-level and picklable, so data-loader workers can be spawned processes.
"""

from __future__ import annotations

import numpy as np
import torch

from jetevo.model.sequences import FlatSequences, TreeSequences


class SequenceDataset(torch.utils.data.Dataset):
    """The jets ``jets`` of built sequences (all of them by default), one dict each."""

    def __init__(self, seqs: TreeSequences | FlatSequences, jets: np.ndarray | None = None):
        self.seqs = seqs
        self.jets = np.arange(len(seqs)) if jets is None else np.asarray(jets, np.int64)

    def __len__(self) -> int:
        return len(self.jets)

    def __getitem__(self, i: int) -> dict:
        return self.seqs.jet(int(self.jets[i]))


class Collate:
    """Right-pads a list of sequences with each field's fill (targets: ignored)."""

    def __init__(self, fill: dict[str, int]):
        self.fill = dict(fill)

    def __call__(self, items: list[dict]) -> dict:
        t = max(len(next(iter(it.values()))) for it in items)
        out = {}
        for k, fill in self.fill.items():
            arr = np.full((len(items), t), fill, np.int64)
            for i, it in enumerate(items):
                arr[i, : len(it[k])] = it[k]
            out[k] = torch.from_numpy(arr)
        return out


def loader(
    seqs: TreeSequences | FlatSequences,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A data loader over every jet of ``seqs`` (seeded shuffling)."""
    return torch.utils.data.DataLoader(
        SequenceDataset(seqs), batch_size=batch_size, shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed), collate_fn=Collate(seqs.fill),
        num_workers=num_workers, drop_last=False,
    )  # fmt: skip
