"""Jet-evolution model: no target leakage, learning, permutation-min, checkpoints, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from jetevo.cli import main
from jetevo.errors import InputError
from jetevo.model import children_kinematics
from jetevo.model.baselines import CountBaselines
from jetevo.model.checkpoint import init_from, load_model, save_model
from jetevo.model.data import Collate
from jetevo.model.gpt import ModelConfig
from jetevo.model.loss import split_nll
from jetevo.model.sequences import IGNORE, TreeSequences, token_file_info
from jetevo.model.train import code_feature_table
from jetevo.model.tree import JetEvolutionModel
from jetevo.tokenize.resolution import code_log_z
from jetevo.tokenize.vocab import Vocab

N_CODES = 64
TINY = {"n_codes": N_CODES, "n_layer": 2, "n_head": 2, "n_embd": 32}
RIGHT_HEADS = ("context", "left-child")


def tiny_model(tokenizer=None, seed=0, **kw) -> JetEvolutionModel:
    torch.manual_seed(seed)
    model = JetEvolutionModel(ModelConfig(**{**TINY, **kw}))
    if tokenizer is not None:
        model.set_code_features(
            torch.from_numpy(code_feature_table(tokenizer)), code_log_z(tokenizer)
        )
        model.tokenizer_identity = tokenizer.identity
    return model


def sequences(token_dir) -> TreeSequences:
    """The token files' expansion sequences, with the scale input of the default model."""
    from jetevo.tokenize.tokenizer import Tokenizer

    tok = Tokenizer.load(token_file_info([token_dir])[1]["path"])
    return TreeSequences(
        [token_dir], Vocab(N_CODES), 128, code_log_z(tok), ModelConfig().scale_bins
    )


def batch_of(seqs: TreeSequences, jets) -> dict:
    return Collate(seqs.fill)([seqs.jet(int(i)) for i in jets])


def test_sequences_follow_preorder_expansion(token_dir):
    seqs = sequences(token_dir)
    start = Vocab(N_CODES).start
    assert np.all(seqs.tokens[seqs.offsets[:-1]] == start)
    # a left child that is a pseudojet is the very next node to expand, never an earlier input
    leaf = Vocab(N_CODES).is_leaf(seqs.left)
    nxt = np.arange(len(seqs.tokens)) + 1
    last = np.zeros(len(seqs.tokens), bool)
    last[seqs.offsets[1:] - 1] = True
    internal_left = ~leaf & ~last & (seqs.right != IGNORE)
    assert np.array_equal(seqs.tokens[nxt[internal_left]], seqs.left[internal_left])
    assert np.all(seqs.right[seqs.offsets[:-1]] == IGNORE)
    # the depth convention the split weighting relies on: START 0, the root's split 1
    assert np.all(seqs.depth[seqs.offsets[:-1]] == 0)
    assert np.all(seqs.depth[seqs.offsets[:-1] + 1] == 1)


def per_position(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Values over the valid positions (flat, row-major) back on the (B, T) grid (0 elsewhere)."""
    grid = torch.zeros(valid.shape, dtype=values.dtype)
    grid[valid] = values
    return grid


@pytest.mark.parametrize("right_head", RIGHT_HEADS)
def test_causality_both_heads(tiny_tokenizer, token_dir, right_head):
    seqs = sequences(token_dir)
    model = tiny_model(tiny_tokenizer, right_head=right_head).eval()
    batch = batch_of(seqs, range(4))
    b, t = batch["tokens"].shape
    valid = batch["left"] != IGNORE
    rng = np.random.default_rng(0)

    def later(x: torch.Tensor, k: int, high: int) -> torch.Tensor:
        """``x`` with every position after k replaced at random (targets: where they exist)."""
        x = x.clone()
        new = torch.from_numpy(rng.integers(0, high, size=(b, t - k - 1)))
        tail = x[:, k + 1 :]
        x[:, k + 1 :] = torch.where(tail == IGNORE, tail, new)
        return x

    with torch.no_grad():
        h = model.hidden(batch)
        left = model.left_log_probs(h)
        right = model.right_log_probs(h, batch["left"].clamp(min=0))
        nll = per_position(split_nll(model, batch, True)["per_split"], valid)
        for k in range(1, t - 1):
            # targets at position k are children of node k: they only ever appear at positions
            # > k; every input there (token, depth, side) and every later target may change
            perturbed = {
                **batch,
                "tokens": later(batch["tokens"], k, Vocab(N_CODES).n_node_tokens),
                "depth": later(batch["depth"], k, model.cfg.max_len + 1),
                "side": later(batch["side"], k, 4),
                "scale": later(batch["scale"], k, model.cfg.scale_bins + 1),
                "left": later(batch["left"], k, Vocab(N_CODES).n_node_tokens),
                "right": later(batch["right"], k, Vocab(N_CODES).n_node_tokens),
            }
            h2 = model.hidden(perturbed)
            assert torch.allclose(model.left_log_probs(h2)[:, : k + 1], left[:, : k + 1], atol=1e-5)
            right2 = model.right_log_probs(h2, perturbed["left"].clamp(min=0))
            assert torch.allclose(right2[:, : k + 1], right[:, : k + 1], atol=1e-5)
            # the training path too, permutation-min swap included
            nll2 = per_position(split_nll(model, perturbed, True)["per_split"], valid)
            assert torch.allclose(nll2[:, : k + 1], nll[:, : k + 1], atol=1e-5)
        # the right head reads this split's left child (and no right target: none is passed)
        other_left = batch["left"].clamp(min=0).roll(1, dims=1)
        assert not torch.allclose(model.right_log_probs(h, other_left), right)


@pytest.mark.parametrize("right_head", RIGHT_HEADS)
def test_permutation_min_equals_plain_when_swap_is_worse(tiny_tokenizer, token_dir, right_head):
    seqs = sequences(token_dir)
    model = tiny_model(tiny_tokenizer, right_head=right_head).eval()
    batch = batch_of(seqs, range(8))
    with torch.no_grad():
        pm = split_nll(model, batch, True)["per_split"]
        plain = split_nll(model, batch, False)["per_split"]
        assert torch.all(pm <= plain + 1e-6)
        # recompute the swapped loss independently: right logits over whole sequences with
        # the true right child as every split's left child
        valid = batch["left"] != IGNORE
        h_all = model.hidden(batch)
        lt, rt = batch["left"][valid], batch["right"][valid]
        has_r = rt != IGNORE
        lg = torch.log_softmax(model.left_log_probs(h_all[valid]), -1)
        swapped_right = model.right_log_probs(h_all, batch["right"].clamp(min=0))[valid][has_r]
        sw = -(
            lg[has_r].gather(1, rt[has_r, None])[:, 0]
            + torch.log_softmax(swapped_right, -1).gather(1, lt[has_r, None])[:, 0]
        )
        worse = sw >= plain[has_r]
        assert worse.any() and torch.allclose(pm[has_r][worse], plain[has_r][worse])
        assert torch.allclose(pm[has_r][~worse], sw[~worse], atol=1e-5)


def test_split_weights_weigh_the_first_splittings():
    """``weighted_split_loss`` on a batch built by hand, against values worked out from its
    definition (docs/model.md, ``TrainConfig.split_weights``): the mean NLL per child, each
    prediction of generation level k (level 0: the root token at START, 1: the root split,
    2: the splits of its children, ...) counted ``weights[k]`` times, later levels once."""
    from fractions import Fraction

    from jetevo.model.loss import weighted_split_loss
    from jetevo.model.train import TrainConfig

    vocab = Vocab(N_CODES)

    def jet(depth, left, right):
        n = len(depth)
        return {
            "tokens": np.array([vocab.start] + [5] * (n - 1)),
            "depth": np.array(depth),
            "side": np.zeros(n, np.int64),
            "scale": np.zeros(n, np.int64),
            "left": np.array(left),
            "right": np.array(right),
        }

    # jet A: START (the root token: one child), the root split, a split at level 2 and one
    # at level 3 (two children each); jet B: START and the root split, then padding
    # (collate pads with depth 0, the START level, and ignored targets)
    fill = {"tokens": vocab.pad, "depth": 0, "side": 0, "scale": 0, "left": IGNORE, "right": IGNORE}
    batch = Collate(fill)(
        [
            jet([0, 1, 2, 3], [7, 3, 4, 70], [IGNORE, 9, 66, 71]),
            jet([0, 1], [8, 2], [IGNORE, 65]),
        ]
    )
    assert batch["depth"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    assert batch["left"][1, 2:].tolist() == [IGNORE, IGNORE]
    # NLL of each split (summed over its children), valid positions in row-major order:
    #           A:START  A:root  A:lvl2  A:lvl3  B:START  B:root
    nll = [1.0, 2.0, 4.0, 8.0, 0.5, 3.0]
    # children:    1       2       2       2       1       2   (10 in all)
    per_split = torch.tensor(nll, dtype=torch.float64, requires_grad=True)

    def loss(weights) -> float:
        return weighted_split_loss(per_split, batch, weights).item()

    # unit weights: plain NLL per child, 18.5 / 10
    assert loss([1.0, 1.0, 1.0]) == pytest.approx(1.85, rel=1e-12)
    # [2, 3]: START predictions twice, root splits three times, deeper splits once:
    # (2 (1 + 0.5) + 3 (2 + 3) + (4 + 8)) / (2 (1 + 1) + 3 (2 + 2) + (2 + 2)) = 30 / 20
    assert loss([2.0, 3.0]) == pytest.approx(1.5, rel=1e-12)
    # [1, 5]: (1.5 + 25 + 12) / (2 + 20 + 4) = 77 / 52
    assert loss([1.0, 5.0]) == pytest.approx(float(Fraction(77, 52)), rel=1e-12)
    # weight 0 drops a level: only the level-3 split is left, 8 nats over its 2 children
    assert loss([0.0, 0.0, 0.0]) == pytest.approx(4.0, rel=1e-12)
    # only the root splits: (2 + 3) / 4; padding (depth 0) never counts as a START position
    assert loss([0.0, 1.0, 0.0, 0.0]) == pytest.approx(1.25, rel=1e-12)
    # the gradient: each split's NLL enters with its weight over the weighted child count
    weighted_split_loss(per_split, batch, [2.0, 3.0]).backward()
    expected = torch.tensor([2, 3, 1, 1, 2, 3], dtype=torch.float64) / 20
    assert torch.allclose(per_split.grad, expected, rtol=0, atol=1e-15)

    assert TrainConfig(split_weights=[8, 8, 4]).split_weights == [8.0, 8.0, 4.0]
    for bad in (5, [1, -1], [2, "a"], [float("inf")], [True]):
        with pytest.raises(ValueError, match="split_weights"):
            TrainConfig(split_weights=bad)


def train_steps(model, seqs, jets, steps, shuffle_targets=False, seed=0):
    rng = np.random.default_rng(seed)
    batch = batch_of(seqs, jets)
    if shuffle_targets:  # children of other jets: no relation between parent and child
        for k in ("left", "right"):
            v = batch[k]
            m = v != IGNORE
            v[m] = v[m][torch.from_numpy(rng.permutation(int(m.sum())))]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        out = split_nll(model, batch, False)
        loss = out["nll_sum"] / out["n_children"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_learns_real_splits_but_not_shuffled_ones(tiny_tokenizer, token_dir):
    seqs = sequences(token_dir)
    jets = np.arange(len(seqs))
    train, test = jets[::2], jets[1::2]
    parents, children = seqs.pairs()
    own = np.repeat(np.arange(len(seqs)), np.diff(seqs.offsets))
    has_r = seqs.right != IGNORE
    jet_of_pair = np.concatenate([own, own[has_r]])
    tr = np.isin(jet_of_pair, train)
    vocab = Vocab(N_CODES)
    base = CountBaselines.fit(parents[tr], children[tr], vocab.n_node_tokens, vocab.size)
    uni, big = base.nll(parents[~tr], children[~tr])

    model = tiny_model(tiny_tokenizer)
    train_steps(model, seqs, train, 60)  # early: a full-batch fit overfits 55 jets later
    with torch.no_grad():
        out = split_nll(model.eval(), batch_of(seqs, test), False)
    test_nll = float(out["nll_sum"] / out["n_children"])
    assert test_nll < big.mean() < uni.mean() + 1e-9, (test_nll, big.mean(), uni.mean())

    shuffled = tiny_model(tiny_tokenizer)
    loss = train_steps(shuffled, seqs, train, 60, shuffle_targets=True)
    assert loss > 0.5 * uni.mean(), "shuffled targets must not be learnable"


def test_save_load_and_init_from(tiny_tokenizer, tmp_path):
    model = tiny_model(tiny_tokenizer, seed=1)
    path = tmp_path / "m.ckpt"
    save_model(model, path, {"note": 1})
    loaded = load_model(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert loaded.tokenizer_identity == tiny_tokenizer.identity

    fresh = tiny_model(tiny_tokenizer, seed=2)
    report = init_from(fresh, path, heads="keep")
    assert report == {"missing": [], "unexpected": []}
    assert torch.equal(fresh.left_head.weight, model.left_head.weight)
    fresh2 = tiny_model(tiny_tokenizer, seed=3)
    before = fresh2.left_head.weight.clone()
    report = init_from(fresh2, path, heads="reinit")
    assert "left_head.weight" in report["missing"] and torch.equal(fresh2.left_head.weight, before)
    assert torch.equal(fresh2.gpt.blocks[0].attn.qkv.weight, model.gpt.blocks[0].attn.qkv.weight)


def test_other_vocabulary_or_tokenizer_is_refused(tiny_tokenizer, token_dir, tmp_path):
    path = tmp_path / "m.ckpt"
    save_model(tiny_model(tiny_tokenizer), path)
    with pytest.raises(InputError, match="vocabulary"):
        init_from(tiny_model(None, n_codes=32), path)
    other = tiny_model(tiny_tokenizer)
    other.tokenizer_identity = "0123456789abcdef"
    with pytest.raises(InputError, match="tokenizer"):
        init_from(other, path)
    from jetevo.model.splits import evaluate_splits

    bad = tiny_model(tiny_tokenizer)
    bad.tokenizer_identity = "0123456789abcdef"
    save_model(bad, tmp_path / "bad.ckpt", {"baselines": None})
    with pytest.raises(InputError, match="tokenizer"):
        evaluate_splits(tmp_path / "bad.ckpt", [token_dir])
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(InputError, match="checkpoint"):
        load_model(tmp_path / "junk.ckpt")


@pytest.mark.parametrize("right_head", RIGHT_HEADS)
def test_predict_and_decode(tiny_tokenizer, right_head):
    model = tiny_model(tiny_tokenizer, right_head=right_head).eval()
    parents = torch.tensor([3, 5, 7])
    greedy = model.predict(parents)
    assert (
        greedy["left"].shape == (3,)
        and torch.all(greedy["p_left"] > 0)
        and torch.all(greedy["p_left"] <= 1)
    )
    g = torch.Generator().manual_seed(0)
    s1 = model.predict(parents, sample=True, top_k=5, generator=g)
    g = torch.Generator().manual_seed(0)
    s2 = model.predict(parents, sample=True, top_k=5, generator=g)
    assert torch.equal(s1["left"], s2["left"]) and torch.equal(s1["right"], s2["right"])
    assert torch.all(s1["left"] < Vocab(N_CODES).n_node_tokens)
    # the docs' parent: the predicted children are a decay of exactly it, as in generation
    parent_p = np.array([[500.0, 0.0, 100.0, 530.0]] * 3)
    kin = children_kinematics(tiny_tokenizer, greedy, parent_p)
    assert kin["left"].shape == (3, 4) and np.all(np.isfinite(kin["right"]))
    assert np.allclose(kin["left"] + kin["right"], parent_p, rtol=1e-12, atol=1e-9)
    for side in ("left", "right"):
        p = kin[side]
        assert np.all(p[:, 3] ** 2 - (p[:, :3] ** 2).sum(1) >= 0) and np.all(p[:, 3] > 0)


def test_right_head_setting_is_validated():
    assert ModelConfig().right_head == "context"
    with pytest.raises(ValueError, match=r"model\.right_head.*context, left-child"):
        ModelConfig(right_head="attention")


def test_context_right_head_really_attends(tiny_tokenizer, token_dir):
    """The context head's attention spreads over several positions, so its query learns;
    the one-key left-child head's query gets no gradient at all."""
    seqs = sequences(token_dir)
    batch = batch_of(seqs, range(8))
    grads = {}
    for right_head in RIGHT_HEADS:
        model = tiny_model(tiny_tokenizer, seed=6, right_head=right_head)
        out = split_nll(model, batch, True)
        (out["nll_sum"] / out["n_children"]).backward()
        grads[right_head] = float(model.right_xattn.q.weight.grad.norm())
        if right_head == "context":
            with torch.no_grad():
                xattn, table = model.right_xattn, model.tokens.table()
                h = model.hidden(batch, table)
                b, t, c = h.shape
                x = h + xattn.child(table[batch["left"].clamp(min=0)])
                q = xattn.q(x).view(b, t, 2, c // 2).transpose(1, 2)
                k, _ = xattn.context(h)
                causal = torch.ones(t, t, dtype=torch.bool).tril()
                w = (q @ k.transpose(-1, -2) / math.sqrt(c // 2)).masked_fill(~causal, -math.inf)
                top = w.softmax(-1).amax(-1)[:, :, 1:]  # positions that see 2 or more keys
            assert float(top.max()) < 0.99, "attention must not sit on one key"
    assert grads["context"] > 1e-4 and grads["left-child"] < 1e-7 * max(1.0, grads["context"])


@pytest.mark.parametrize("right_head", RIGHT_HEADS)
def test_predict_agrees_with_the_training_path(tiny_tokenizer, token_dir, right_head):
    """``predict`` with a sequence's first p positions as context gives the children's
    probabilities that the training loss and the whole-sequence right logits give at p."""
    seqs = sequences(token_dir)
    model = tiny_model(tiny_tokenizer, seed=2, right_head=right_head).eval()
    full = batch_of(seqs, range(16))
    for p in (1, 3, 6):
        rows = full["right"][:, p] != IGNORE
        assert int(rows.sum()) >= 2
        batch = {k: v[rows] for k, v in full.items()}
        context = {k: batch[k][:, :p] for k in ("tokens", "depth", "side")}
        pred = model.predict(
            batch["tokens"][:, p], context, parent_depth=batch["depth"][:, p],
            parent_side=batch["side"][:, p],
        )  # fmt: skip
        batch["left"][:, p], batch["right"][:, p] = pred["left"], pred["right"]
        with torch.no_grad():
            h = model.hidden(batch)
            right = model.right_log_probs(h, batch["left"].clamp(min=0))[:, p].softmax(-1)
            nll = per_position(split_nll(model, batch, False)["per_split"], batch["left"] != IGNORE)
        assert torch.equal(right.argmax(-1), pred["right"])
        p_right = right.gather(1, pred["right"][:, None])[:, 0]
        assert torch.allclose(p_right, pred["p_right"], atol=1e-5)
        expected = -(pred["p_left"].log() + pred["p_right"].log())
        assert torch.allclose(nll[:, p], expected, atol=1e-4)


@pytest.mark.parametrize("right_head", RIGHT_HEADS)
def test_cached_and_uncached_generation_agree(tiny_tokenizer, right_head):
    from jetevo.generate import sample_trees

    model = tiny_model(tiny_tokenizer, seed=4, right_head=right_head).eval()
    model.shift_leaf_odds(0.5)
    for roots in (np.arange(16) * 3, None):  # pseudojet roots (deeper trees), sampled roots
        a, b = (
            sample_trees(
                model, 16, root_tokens=roots, generator=torch.Generator().manual_seed(3),
                use_cache=use_cache,
            )
            for use_cache in (True, False)
        )  # fmt: skip
        for f in ("token", "parent", "left", "offsets", "runaway"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert a.steps == b.steps
    assert sample_trees(model, 16, root_tokens=np.arange(16) * 3).steps >= 5


def test_cli_train_finetune_and_evaluate_splits(token_dir, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: {n_layer: 1, n_head: 2, n_embd: 16}\n"
        "train: {max_steps: 4, batch_size: 8, val_every: 2, val_batches: 2, warmup_steps: 1}\n"
    )
    run = tmp_path / "pre"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--train",
                str(token_dir),
                "--val",
                str(token_dir),
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    assert (run / "model.ckpt").exists()
    ft = tmp_path / "ft"
    args = [
        "train",
        "--config",
        str(cfg),
        "--train",
        str(token_dir),
        "--val",
        str(token_dir),
        "--out",
        str(ft),
        "--quiet",
    ]
    assert main([*args, "--init-from", str(run / "model.ckpt"), "train.init_heads=reinit"]) == 0
    state = torch.load(ft / "model.ckpt", weights_only=False)
    assert (
        state["train"]["init_from"] == str(run / "model.ckpt")
        and "left_head.weight" in state["train"]["init_keys"]["missing"]
    )
    out_json = tmp_path / "splits.json"
    assert (
        main(
            [
                "evaluate-splits",
                "--ckpt",
                str(ft / "model.ckpt"),
                "--tokens",
                str(token_dir),
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    result = json.loads(out_json.read_text())
    for key in ("nll", "top1", "top5", "unigram_nll", "bigram_nll"):
        assert np.isfinite(result[key])
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--train",
                str(tmp_path / "nope"),
                "--val",
                str(token_dir),
                "--out",
                str(ft),
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err


def test_grouped_output_is_exact_and_fast_sampling_matches_it(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer, seed=5, output_group_size=16).eval()
    out = model.output
    assert out.n_groups == 8 and out.group_members.unique().numel() == Vocab(N_CODES).n_node_tokens
    # groups never mix leaf and pseudojet tokens
    is_leaf = torch.as_tensor(Vocab(N_CODES).is_leaf(out.group_members.numpy()))
    assert torch.all(is_leaf.all(1) | (~is_leaf).all(1))
    h = torch.randn(1, 32)
    table = model.tokens.table()
    with torch.no_grad():
        logp = model.left_log_probs(h, table)[0]
        assert torch.logsumexp(logp, 0).abs() < 1e-5
        g = torch.Generator().manual_seed(0)
        draws, p_draws = out.sample(model.left_state(h.expand(20000, -1)), table, generator=g)
        # the probability the two-level sampler reports is the token's exact one
        assert torch.allclose(p_draws, logp.exp()[draws], atol=1e-5)
    freq = torch.bincount(draws, minlength=Vocab(N_CODES).n_node_tokens).double() / 20000
    assert 0.5 * (freq - logp.double().exp()).abs().sum() < 0.06  # total variation


def test_comet_logger_without_package_or_key_falls_back(token_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "comet_ml", None)  # as if comet-ml were not installed
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: {n_layer: 1, n_head: 2, n_embd: 16}\ntrain: {max_steps: 2, batch_size: 8, val_every: 2, val_batches: 1}\n"
    )
    args = [
        "train",
        "--config",
        str(cfg),
        "--train",
        str(token_dir),
        "--val",
        str(token_dir),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "train.logger=comet",
    ]
    assert main(args) == 0
    assert "logging to CSV instead" in capsys.readouterr().out
    assert list((tmp_path / "run" / "logs").glob("*/metrics.csv"))


def test_scale_input_is_the_same_from_trees_and_from_sequences(token_dir, tiny_tokenizer):
    """The scale input of training (token chain over the tree's parents) equals what predict
    and generation compute from the sequence alone (tokens and depths in pre-order)."""
    from jetevo.model.sequences import scale_bin, sequence_log_pt

    seqs = sequences(token_dir)
    batch = batch_of(seqs, range(min(20, len(seqs))))
    tokens, depth = batch["tokens"].numpy(), batch["depth"].numpy()
    bins = scale_bin(
        sequence_log_pt(tokens, depth, code_log_z(tiny_tokenizer)), ModelConfig().scale_bins
    )
    real = (batch["left"].numpy() != IGNORE) & (np.arange(tokens.shape[1]) > 0)
    assert np.array_equal(bins[real], batch["scale"].numpy()[real])
    assert len(np.unique(bins[real])) > 3 and np.all(batch["scale"].numpy()[:, 0] == 0)


def test_init_from_refuses_to_keep_heads_of_another_right_head(tiny_tokenizer, tmp_path):
    path = tmp_path / "old_head.ckpt"
    save_model(tiny_model(tiny_tokenizer, right_head="left-child"), path)
    with pytest.raises(InputError, match="right_head=left-child"):
        init_from(tiny_model(tiny_tokenizer), path, "keep")
    report = init_from(tiny_model(tiny_tokenizer), path, "reinit")
    assert any(k.startswith("right_xattn") for k in report["missing"])
