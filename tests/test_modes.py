"""Both modes on one backbone: flat sequences and loss, causality, flat generation, teacher
forcing (training inputs == sampler inputs, both modes), checkpoints across versions and
modes, and the flat mode from the CLI."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import torch
from conftest import TINY_TOKENIZER

from jetevo.cli import main
from jetevo.errors import InputError, SettingError
from jetevo.generate.sampler import FlatSamples, Teacher, sample_flat, sample_trees
from jetevo.model.checkpoint import init_from, load_model, save_model
from jetevo.model.data import Collate
from jetevo.model.flat import FlatModel
from jetevo.model.gpt import ModelConfig
from jetevo.model.loss import flat_nll
from jetevo.model.sequences import IGNORE, FlatSequences, TreeSequences
from jetevo.model.train import code_feature_table
from jetevo.model.tree import JetEvolutionModel
from jetevo.tokenize.resolution import code_log_z
from jetevo.tokenize.vocab import Vocab
from jetevo.trees.format import Topology, load, validate

N_CODES = TINY_TOKENIZER["n_codes"]
VOCAB = Vocab(N_CODES)


def tiny(tokenizer, mode: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    features = code_feature_table(tokenizer)
    cfg = ModelConfig(
        mode=mode, n_codes=N_CODES, n_code_features=features.shape[1], n_layer=2, n_head=2,
        n_embd=32, max_len=129 if mode == "flat" else 128,
        output_group_size=0 if mode == "flat" else 16,
        positional="none" if mode == "flat" else "learned", **kw,
    )  # fmt: skip
    model = FlatModel(cfg) if mode == "flat" else JetEvolutionModel(cfg)
    model.set_code_features(torch.from_numpy(features), code_log_z(tokenizer))
    model.tokenizer_identity = tokenizer.identity
    return model.eval()


def flat_batch(seqs: FlatSequences, jets) -> dict:
    return Collate(seqs.fill)([seqs.jet(int(i)) for i in jets])


# ------------------------------------------------------------------ flat sequences and loss
def test_flat_sequences_are_start_particles_stop(flat_token_dir):
    seqs = FlatSequences([flat_token_dir], VOCAB, 129)
    trees = load([flat_token_dir], columns=["token", "left", "px", "py"])
    for i in range(len(seqs)):
        jet = seqs.jet(i)
        leaf = ak.to_numpy(trees["left"][i]) < 0
        pt = np.hypot(ak.to_numpy(trees["px"][i]), ak.to_numpy(trees["py"][i]))[leaf]
        tokens = ak.to_numpy(trees["token"][i])[leaf][np.argsort(-pt, kind="stable")]
        assert jet["tokens"][0] == VOCAB.start and np.array_equal(jet["tokens"][1:], tokens)
        # targets: the next particle's class, then STOP
        assert np.array_equal(jet["target"][:-1], VOCAB.flat_class(tokens))
        assert jet["target"][-1] == VOCAB.flat_class(VOCAB.stop) == N_CODES
    assert seqs.truncated == 0


def test_flat_sequences_cut_long_jets_to_their_hardest(flat_token_dir):
    full = FlatSequences([flat_token_dir], VOCAB, 129)
    cut = FlatSequences([flat_token_dir], VOCAB, 6)
    n_leaves = np.diff(full.offsets) - 1
    assert cut.truncated == int(np.sum(n_leaves > 5)) > 0
    for i in range(len(cut)):
        a, b = full.jet(i), cut.jet(i)
        n = len(b["tokens"])
        assert n == min(n_leaves[i], 5) + 1 and np.array_equal(a["tokens"][:n], b["tokens"])
        # a cut jet goes on: no STOP target where it was cut; an uncut one ends with STOP
        assert b["target"][-1] == (IGNORE if n_leaves[i] > 5 else N_CODES)
        assert np.array_equal(b["target"][:-1], a["target"][: n - 1])


def test_padding_is_never_in_the_flat_loss(flat_tokenizer, flat_token_dir):
    model = tiny(flat_tokenizer, "flat")
    seqs = FlatSequences([flat_token_dir], VOCAB, 129)
    lengths = np.diff(seqs.offsets)
    jets = [int(np.argmin(lengths)), int(np.argmax(lengths))]
    batch = flat_batch(seqs, jets)
    pad = batch["target"] == IGNORE
    assert pad.any()
    with torch.no_grad():
        out = flat_nll(model, batch)
        assert int(out["n_targets"]) == int(lengths[jets].sum())
        # whatever sits in the padded positions, the loss is the same
        other = {k: v.clone() for k, v in batch.items()}
        other["tokens"][pad] = torch.randint(0, VOCAB.n_node_tokens, (int(pad.sum()),))
        assert torch.equal(flat_nll(model, other)["nll_sum"], out["nll_sum"])
        # and equals the sum of the jets' losses alone
        alone = sum(float(flat_nll(model, flat_batch(seqs, [j]))["nll_sum"]) for j in jets)
        assert abs(alone - float(out["nll_sum"])) < 1e-3


def test_flat_model_is_causal(flat_tokenizer, flat_token_dir):
    model = tiny(flat_tokenizer, "flat", seed=3)
    seqs = FlatSequences([flat_token_dir], VOCAB, 129)
    batch = flat_batch(seqs, range(4))
    t = batch["tokens"].shape[1]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        table = model.tokens.table()
        logp = model.output.log_probs(model.state(model.hidden(batch, table)), table)
        for k in (0, 3, t // 2):
            later = batch["tokens"].clone()
            later[:, k + 1 :] = torch.randint(
                N_CODES, 2 * N_CODES, later[:, k + 1 :].shape, generator=g
            )
            logp2 = model.output.log_probs(
                model.state(model.hidden({"tokens": later}, table)), table
            )
            assert torch.allclose(logp2[:, : k + 1], logp[:, : k + 1], atol=1e-5)
            assert not torch.allclose(logp2[:, k + 1 :], logp[:, k + 1 :])


# ------------------------------------------------------------------ flat generation
def test_flat_generation_stops_per_jet_seeded_and_cache_is_exact(flat_tokenizer):
    model = tiny(flat_tokenizer, "flat", seed=1)
    run = {}
    for cache in (True, False):
        g = torch.Generator().manual_seed(4)
        run[cache] = sample_flat(model, 24, generator=g, use_cache=cache, max_nodes=40)
    a, b = run[True], run[False]
    assert np.array_equal(a.token, b.token) and np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.runaway, b.runaway) and np.array_equal(a.empty, b.empty)
    g = torch.Generator().manual_seed(4)
    again = sample_flat(model, 24, generator=g, max_nodes=40)
    assert np.array_equal(again.token, a.token)
    # every jet ends at its own STOP: lengths differ, every token is a particle
    assert len(a) + len(a.runaway) + len(a.empty) == 24
    assert len(np.unique(np.diff(a.offsets))) > 1 and np.all(VOCAB.is_leaf(a.token))
    assert np.all(np.diff(a.offsets) <= 40)


def test_flat_generation_counts_runaways_at_the_particle_limit(flat_tokenizer):
    model = tiny(flat_tokenizer, "flat", seed=1)
    with torch.no_grad():  # STOP never chosen: every jet runs into the limit
        model.output.bias[N_CODES] = -1e4
    s = sample_flat(model, 8, generator=torch.Generator().manual_seed(0), max_nodes=5)
    assert len(s) == 0 and len(s.runaway) == 8 and s.nodes_sampled == 8 * 5


# ------------------------------------------------------------------ teacher forcing
@pytest.mark.parametrize("scale_bins", [32, 0])
def test_tree_teacher_forcing_feeds_the_training_inputs(tiny_tokenizer, token_dir, scale_bins):
    """A real tree through training's sequences and through the sampler (teacher forcing)
    gives identical inputs at every position: one order, one input rule (with and without
    the scale input: the order comes from the model's stored log z either way)."""
    model = tiny(tiny_tokenizer, "tree", seed=2, scale_bins=scale_bins)
    assert model.log_z_table() is not None
    seqs = TreeSequences([token_dir], VOCAB, 128, model.log_z_table(), model.cfg.scale_bins)
    cols = ["token", "left", "right", "parent", "depth"]
    trees = load([token_dir], columns=cols)
    counts = ak.to_numpy(ak.num(trees["token"], axis=1))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = {k: ak.to_numpy(ak.flatten(trees[k])).astype(np.int64) for k in cols}
    teacher = Teacher(
        flat["token"], Topology(flat["left"], flat["right"], flat["parent"], flat["depth"], offsets)
    )
    trace: list[dict] = []
    out = sample_trees(model, len(counts), teacher=teacher, trace=trace)
    assert len(out) == len(counts) and len(out.runaway) == 0
    fed = {k: [[] for _ in counts] for k in ("tokens", "depth", "side", "scale")}
    for step in trace:
        for k in fed:
            for row, value in zip(step["rows"], step[k], strict=True):
                fed[k][row].append(int(value))
    n_reordered = 0
    for i in range(len(counts)):
        jet = seqs.jet(i)
        for k in fed:
            assert fed[k][i] == jet[k].tolist(), (i, k)
        # the sampled tree is the real one (same tokens, as a multiset per jet)
        a, b = out.offsets[i], out.offsets[i + 1]
        real = flat["token"][offsets[i] : offsets[i + 1]]
        assert sorted(out.token[a:b]) == sorted(real)
        # stored pre-order (true pT) against the expansion order (token chain)
        inner = flat["left"][offsets[i] : offsets[i + 1]] >= 0
        n_reordered += int(not np.array_equal(real[inner], jet["tokens"][1:]))
    # the reordering is not a no-op here: the test compares two genuinely different orders
    assert n_reordered > 0


def test_flat_teacher_forcing_feeds_the_training_inputs(flat_tokenizer, flat_token_dir):
    model = tiny(flat_tokenizer, "flat")
    seqs = FlatSequences([flat_token_dir], VOCAB, 129)
    n = len(seqs)
    particles = [seqs.jet(i)["tokens"][1:] for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in particles])])
    teacher = FlatSamples(np.concatenate(particles), offsets, np.zeros(0, int), np.zeros(0, int), 0)
    trace: list[dict] = []
    out = sample_flat(model, n, teacher=teacher, trace=trace)
    fed: list[list[int]] = [[] for _ in range(n)]
    for step in trace:
        for row, token in zip(step["rows"], step["tokens"], strict=True):
            fed[row].append(int(token))
    for i in range(n):
        assert fed[i] == seqs.jet(i)["tokens"].tolist()
    assert np.array_equal(out.token, teacher.token) and np.array_equal(out.offsets, offsets)


# ------------------------------------------------------------------ checkpoints
def test_checkpoints_are_weights_only_and_versioned(tiny_tokenizer, tmp_path):
    path = tmp_path / "m.ckpt"
    save_model(tiny(tiny_tokenizer, "tree"), path, {"baselines": {"x": np.arange(3)}})
    state = torch.load(path, weights_only=True)  # no pickled code: plain torch.load works
    assert state["format_version"] == 2 and torch.is_tensor(state["baselines"]["x"])
    state["format_version"] = 99
    torch.save(state, tmp_path / "new.ckpt")
    with pytest.raises(InputError, match=r"new\.ckpt: model checkpoint format version 99 is newer"):
        load_model(tmp_path / "new.ckpt")
    torch.save({"kind": "jetevo-model", "payload": SettingError("x")}, tmp_path / "pickle.ckpt")
    with pytest.raises(
        InputError, match=r"pickle\.ckpt: not a jetevo model checkpoint: it holds pickled"
    ):
        load_model(tmp_path / "pickle.ckpt")


def test_tree_checkpoints_of_retired_tokens_are_refused_flat_ones_load(tiny_tokenizer, tmp_path):
    """Tree models of format versions 0 and 1 spoke parent-relative-v1 tokens: refused in
    one line that says so; a version-1 flat model (jet-relative tokens, unchanged) loads."""
    save_model(tiny(tiny_tokenizer, "tree", seed=4), tmp_path / "tree.ckpt")
    state = torch.load(tmp_path / "tree.ckpt", weights_only=True)
    for version in (1, None):
        old = dict(state)
        if version is None:
            del old["format_version"]
        else:
            old["format_version"] = version
        torch.save(old, tmp_path / "old.ckpt")
        with pytest.raises(InputError, match=r"old\.ckpt: .*retired parent-relative-v1"):
            load_model(tmp_path / "old.ckpt")
    flat = tiny(tiny_tokenizer, "flat", seed=4)
    save_model(flat, tmp_path / "flat.ckpt")
    state = torch.load(tmp_path / "flat.ckpt", weights_only=True)
    torch.save({**state, "format_version": 1}, tmp_path / "flat1.ckpt")
    loaded = load_model(tmp_path / "flat1.ckpt")
    for (k, a), b in zip(flat.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_mode_and_tokenizer_must_agree(token_dir, flat_token_dir, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "model: {n_layer: 1, n_head: 2, n_embd: 16, output_group_size: 0}\n"
        "train: {max_steps: 1, batch_size: 4, val_every: 1, val_batches: 1}\n"
    )
    for tokens, mode in ((token_dir, "flat"), (flat_token_dir, "tree")):
        args = ["train", "--config", str(cfg), "--train", str(tokens), "--val", str(tokens),
                "--out", str(tmp_path / mode), "--quiet", f"model.mode={mode}"]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"model.mode is {mode}" in err


def test_modes_do_not_mix(tiny_tokenizer, flat_tokenizer, tmp_path):
    save_model(tiny(tiny_tokenizer, "tree"), tmp_path / "tree.ckpt")
    flat = tiny(flat_tokenizer, "flat")
    flat.tokenizer_identity = None
    with pytest.raises(
        InputError, match=r"tree\.ckpt: pretrained in tree mode, this model is flat"
    ):
        init_from(flat, tmp_path / "tree.ckpt")
    with pytest.raises(SettingError, match="output_group_size must be 0 in flat mode"):
        ModelConfig(mode="flat", output_group_size=16)
    with pytest.raises(SettingError, match=r"model\.mode"):
        ModelConfig(mode="graph")


# ------------------------------------------------------------------ the flat mode end to end
def test_flat_mode_trains_fine_tunes_evaluates_and_generates(
    flat_token_dir, tree_dir, tmp_path, capsys
):
    cfg = tmp_path / "flat.yaml"
    cfg.write_text(
        "defaults: "
        + str(__import__("pathlib").Path(__file__).parents[1] / "configs" / "flat_base.yaml")
        + "\nmodel: {n_layer: 1, n_head: 2, n_embd: 16}\n"
        "train: {max_steps: 3, batch_size: 8, val_every: 3, val_batches: 1, warmup_steps: 1}\n"
    )
    common = [
        "--config",
        str(cfg),
        "--train",
        str(flat_token_dir),
        "--val",
        str(flat_token_dir),
        "--quiet",
    ]
    assert main(["train", *common, "--out", str(tmp_path / "pre")]) == 0
    pre = tmp_path / "pre" / "model.ckpt"
    assert main(["train", *common, "--out", str(tmp_path / "ft"), "--init-from", str(pre)]) == 0
    ckpt = tmp_path / "ft" / "model.ckpt"
    model = load_model(ckpt)
    assert isinstance(model, FlatModel) and model.gpt.pos_emb is None
    capsys.readouterr()
    assert main(["evaluate-particles", "--ckpt", str(ckpt), "--tokens", str(flat_token_dir),
                 "--json", str(tmp_path / "p.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "p.json").read_text())
    assert (
        result["nll"] > 0 and result["bigram_nll"] > 0 and "per-particle" in capsys.readouterr().out
    )
    assert main(["evaluate-splits", "--ckpt", str(ckpt), "--tokens", str(flat_token_dir),
                 "--json", str(tmp_path / "s.json")]) == 2  # fmt: skip
    assert "evaluate-particles" in capsys.readouterr().err
    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(ckpt), "--n-jets", "12", "--seed", "3",
                 "--out", str(out), "--quiet", "--max-nodes", "60"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_written"] == 12 and summary["generator"] == "flat transformer"
    files = sorted(out.glob("generated.*.trees.parquet"))
    validate(load(files), scheme="E")  # reclustered from its particles, as real jets are
    trees = load(files, columns=["token", "left", "n_constituents", "source", "entry"])
    leaf = ak.to_numpy(ak.flatten(trees["left"])) < 0
    tok = ak.to_numpy(ak.flatten(trees["token"]))
    assert np.all(VOCAB.is_leaf(tok[leaf])) and np.all(VOCAB.is_pseudojet(tok[~leaf]))
    assert np.array_equal(ak.to_numpy(trees["entry"]), np.arange(12))
    # every particle carries its own sampled token: decoding it gives the stored particle
    from jetevo.tokenize.decode import decode_particles
    from jetevo.tokenize.tokenizer import Tokenizer

    tok_flat = Tokenizer.load(model.extra["tokenizer"]["path"])
    kin = load(files, columns=["px", "py", "pz"])
    p3 = np.stack([ak.to_numpy(ak.flatten(kin[k])) for k in ("px", "py", "pz")], 1)[leaf]
    decoded = decode_particles(tok_flat, tok[leaf], "pion")[:, :3]
    assert np.allclose(decoded, p3, rtol=1e-5, atol=1e-4)
    # the same generation again is the same sample
    assert main(["generate", "--ckpt", str(ckpt), "--n-jets", "12", "--seed", "3",
                 "--out", str(tmp_path / "gen2"), "--quiet", "--max-nodes", "60"]) == 0  # fmt: skip
    again = load(sorted((tmp_path / "gen2").glob("*.parquet")), columns=["token"])
    assert ak.all(again["token"] == trees["token"])
    # flat models take no tree-only options
    assert main(["generate", "--ckpt", str(ckpt), "--n-jets", "2", "--out", str(tmp_path / "g3"),
                 "--baseline", "bigram", "--quiet"]) == 2  # fmt: skip
    assert "tree-mode" in capsys.readouterr().err
