"""The fidelity diagnosis (:mod:`jetevo.evaluate.fidelity`): one split at a time."""

from __future__ import annotations

import numpy as np
from conftest import tiny_checkpoint

from jetevo.evaluate.closure import COLUMNS, per_depth, split_table
from jetevo.evaluate.fidelity import one_step_splits, pair_table
from jetevo.kinematics import four_momentum
from jetevo.model.checkpoint import load_model, model_sequences
from jetevo.tokenize import features as F
from jetevo.tokenize.report import decode_one_step
from jetevo.trees.format import load, tree_files


def test_pair_table_known_answer():
    """Two massless children at (y, phi) = (0.1, 0) and (-0.1, 0) with pT 30 and 10: z 0.25,
    opening 0.2, ln kt = ln(10 * 0.2); wider than a parent split of 0.15, not of 0.3."""
    left = four_momentum(np.array([30.0, 30.0]), np.array([0.1, 0.1]), np.zeros(2), np.zeros(2))
    right = four_momentum(np.array([10.0, 10.0]), np.array([-0.1, -0.1]), np.zeros(2), np.zeros(2))
    leaf_l, leaf_r = np.array([True, False]), np.array([True, True])
    t = pair_table(np.array([1, 2]), left, right, np.array([0.15, 0.3]), leaf_l, leaf_r)
    assert np.allclose(t["z"], 0.25) and np.allclose(t["opening"], 0.2)
    assert np.allclose(t["ln_kt"], np.log(2.0))
    assert list(t["wider"]) == [True, False] and list(t["leaves"]) == [2, 1]


def test_oracle_one_step_is_the_tokenizer_alone(tiny_tokenizer, token_dir, tmp_path):
    """With the true children's tokens, one step is the tokenizer's one-split decoding
    (tokenizer eval's path, reached another way): the same splits, the same table; the
    model's sampled step covers every real parent once and is seeded."""
    ckpt = tiny_checkpoint(tiny_tokenizer, token_dir, tmp_path / "m.ckpt")
    model = load_model(ckpt)
    files = tree_files([token_dir])[:1]
    seqs = model_sequences(model, ckpt, files)
    oracle = one_step_splits(model, tiny_tokenizer, seqs, oracle=True)
    # the same through the report's decoding of true pairs
    a = F.node_arrays(load(files, columns=["px", "py", "pz", "E", "left", "parent"]))
    a["p"] = F.summed_nodes(a)
    a["context"] = F.split_parents(a)
    child = a["parent"] >= 0
    kept = {k: a[k][child] for k in ("p", "parent", "context")}
    f = F.split_features(kept["p"], kept["context"])
    decoded = tiny_tokenizer.features_from_codes(tiny_tokenizer.codes_from_features(f))
    reco = decode_one_step(tiny_tokenizer.features, decoded, kept)
    pairs = F.sibling_pairs(kept["parent"])
    none = np.zeros(len(pairs), bool)
    same = pair_table(np.zeros(len(pairs), np.int64), reco[pairs[:, 0]], reco[pairs[:, 1]],
                      np.full(len(pairs), np.nan), none, none)  # fmt: skip
    assert len(oracle["z"]) == len(pairs)
    for key in ("z", "opening"):
        assert np.allclose(np.sort(oracle[key]), np.sort(same[key]), atol=1e-9), key
    # a sampled step: one split per real parent, seeded
    s1 = one_step_splits(model, tiny_tokenizer, seqs, seed=3)
    s2 = one_step_splits(model, tiny_tokenizer, seqs, seed=3)
    assert len(s1["z"]) == len(pairs) and np.array_equal(s1["z"], s2["z"])
    assert np.array_equal(s1["depth"], oracle["depth"])
    truth = split_table(load(files, columns=COLUMNS))
    assert np.array_equal(np.sort(truth["depth"]), np.sort(oracle["depth"]))
    assert set(truth) == set(oracle)  # one split table, whatever made the splits
    rows = per_depth({"truth": truth, "tokenizer": oracle, "one_step": s1})
    assert rows[0]["depth"] == 0 and rows[0]["truth"]["wider_fraction"] is None
    assert all(0 <= r["one_step"]["leaf_fraction"] <= 1 for r in rows if r["one_step"]["n_splits"])
