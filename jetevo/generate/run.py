"""``jetevo generate``: sample whole jets as declustering trees from a trained model.

Glue: batches of jets are sampled with :func:`jetevo.generate.sampler.sample_trees` (or
the bigram reference), decoded with :func:`jetevo.tokenize.decode.decode_tree`, put in
the tree format's order by :meth:`jetevo.trees.format.Topology.harder_first` and written
(plus ``token``) by the tree writer, in atomic shards, with a ``summary.json`` that counts
every runaway jet.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from jetevo.errors import InputError, JetevoError, SettingError
from jetevo.generate.bigram import sample_bigram_trees
from jetevo.generate.prefix import PrefixJets, check_prefix_settings, read_prefix
from jetevo.generate.sampler import (
    FlatSamples,
    SampledTrees,
    node_limit,
    particle_limit,
    sample_flat,
    sample_trees,
)
from jetevo.io.atomic import ensure_writable_dir, remove_stale_temporaries, write_json
from jetevo.kinematics import JET_R, boost_rapidity, pt, pt_y_phi_m
from jetevo.tokenize.decode import PARTICLE_MASSES, decode_particles, decode_tree
from jetevo.tokenize.resolution import Resolution, code_log_z
from jetevo.trees.format import JetColumns, Topology
from jetevo.trees.writer import ShardedTreeWriter, tree_table

GENERATED = re.compile(r"generated(-s\d{4,}of\d{4,})?\.\d{4,}\.trees\.parquet")


class GenerationError(JetevoError):
    """The model could not produce the requested number of complete trees."""


def resolution_for(model, tokenizer, enabled: bool = True) -> Resolution:
    """The token chain every generation follows (it orders each sampled pair harder first, as
    in training) with the checkpoint's resolution scale, if it has one and ``enabled``."""
    scale = (model.extra.get("resolution") or {}).get("log_pt_min") if enabled else None
    return Resolution(code_log_z(tokenizer), -np.inf if scale is None else float(scale))


def root_condition_tokens(tokenizer, pt: float, eta: float, mass: float) -> tuple[int, float]:
    """Nearest root token to a jet (pT, η, mass), and the root rapidity to place it at."""
    if not (pt > 0 and mass >= 0 and np.isfinite(eta)):
        raise SettingError(
            f"root condition needs pT > 0, mass >= 0 and a finite eta, got {pt}, {eta}, {mass}"
        )
    pz = pt * np.sinh(eta)
    e = np.sqrt(pt**2 + pz**2 + mass**2)
    p = np.array([[pt, 0.0, pz, e]])
    token = int(tokenizer.encode(p, None, np.array([False]))[0])
    return token, float(pt_y_phi_m(p)[1][0])


def generated_table(
    trees: SampledTrees, p: np.ndarray, jets: JetColumns, metadata: dict, precision="float32"
) -> pa.Table:
    """Decoded trees (four-momenta ``p`` in generation order) as a tree table: harder child
    first, ``leaf_index`` by decreasing pT, the node tokens, the jet columns ``jets``."""
    order, topology, leaf_index = trees.harder_first(pt(p))
    return tree_table(
        p[order], topology, leaf_index, jets, metadata, precision, {"token": trees.token[order]}
    )


def flat_generated_table(
    samples: FlatSamples, p: np.ndarray, tokenizer, entry0: int, source: str, metadata: dict
) -> pa.Table:
    """Flat-mode jets (particle four-momenta ``p`` in sampled order) reclustered with the
    same kt code as real jets into the tree format, plus ``token``: the sampled token of
    every particle, and the flat tokenizer's token of every pseudojet the clustering made."""
    from jetevo.trees.recluster import cluster_flat

    counts = np.diff(samples.offsets)
    jet_of = np.repeat(np.arange(len(samples)), counts)
    # particles in decreasing pT per jet, as reclustering orders constituents
    order = np.lexsort((-pt(p), jet_of))
    p, token = p[order], samples.token[order]
    px, py, pz, e = (np.ascontiguousarray(p[:, i]) for i in range(4))
    trees = cluster_flat(px, py, pz, e, samples.offsets, "E", JET_R)
    topology = Topology(
        trees["left"], trees["right"], trees["parent"], trees["depth"], trees["node_offsets"]
    )
    leaf = trees["leaf_index"] >= 0
    node_jet = np.repeat(np.arange(len(samples)), np.diff(trees["node_offsets"]))
    node_token = np.empty(len(leaf), np.int64)
    node_token[leaf] = token[samples.offsets[node_jet[leaf]] + trees["leaf_index"][leaf]]
    inner = ~leaf
    if inner.any():  # every pseudojet relative to its jet's axis (the root, itself included)
        axis = trees["p"][trees["node_offsets"][node_jet[inner]]]
        node_token[inner] = tokenizer.encode(trees["p"][inner], axis, np.zeros(inner.sum(), bool))
    jets = JetColumns.constant("generated", source, np.arange(entry0, entry0 + len(samples)))
    return tree_table(
        trees["p"], topology, trees["leaf_index"], jets, metadata, "float32", {"token": node_token}
    )


def _check_settings(
    n_jets, batch_size, temperature, particle_mass, device, top_k, max_nodes, shard_size,
):  # fmt: skip
    if n_jets < 1 or batch_size < 1:
        raise SettingError("--n-jets and --batch-size must be positive")
    for name, value in (("--top-k", top_k), ("--max-nodes", max_nodes), ("shard_size", shard_size)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise SettingError(f"{name} must be a whole number >= 1, got {value!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise SettingError(f"--temperature must be a finite number > 0, got {temperature}")
    if particle_mass not in PARTICLE_MASSES:
        raise SettingError(f"--particle-mass must be one of {tuple(PARTICLE_MASSES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("--device cuda requested but no CUDA device is available")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of a large production (``--shard K/N``): its own share of
    the jets (and entries), its own seed stream, and its own files in the shared folder."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        k, sep, n = text.partition("/")
        if not (sep and k.isdigit() and n.isdigit() and int(k) < int(n)):
            raise SettingError(f"--shard takes K/N with 0 <= K < N, got {text!r}")
        return cls(int(k), int(n))

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def stem(self) -> str:
        return "generated" if self.whole else f"generated-s{self.index:04d}of{self.count:04d}"

    @property
    def summary(self) -> str:
        return "summary.json" if self.whole else f"summary-s{self.index:04d}of{self.count:04d}.json"

    def share(self, n: int) -> tuple[int, int]:
        """This shard's [start, stop) of ``n`` items (shares differ by at most one)."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def seed(self, seed: int) -> int:
        """The run's seed for one process; a shard's own stream from it (disjoint streams)."""
        if self.whole:
            return seed
        state = np.random.SeedSequence(seed).spawn(self.count)[self.index].generate_state(2)
        return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def _output_folder(path, shard: Shard, run: dict) -> Path:
    """The output folder, emptied of this shard's (or an unsharded run's) earlier outputs, so
    that a failed run never leaves older jets to be read as new; refused if it holds other
    tree files, or shards of a run with other settings (``run``)."""
    out = ensure_writable_dir(path)
    remove_stale_temporaries(out)
    others = sorted(f.name for f in out.glob("*.parquet") if not GENERATED.fullmatch(f.name))
    summaries = sorted(out.glob("summary*.json"))
    foreign = [f.name for f in summaries if "n_requested" not in _read_json(f)]
    if others or foreign:
        raise InputError(
            out,
            f"holds files not written by jetevo generate ({', '.join((others + foreign)[:3])}"
            "): use another --out",
        )
    if not shard.whole:
        for f in summaries:
            old = _read_json(f).get("run")
            if f.name != shard.summary and f.name != "summary.json" and old != run:
                raise InputError(
                    f, "is a shard of a run with other settings: use another --out (or remove it)"
                )
    # a whole run replaces everything generated here; a shard, its own files and a whole run's
    mine = ("generated*.trees.parquet", "summary*.json") if shard.whole else (
        f"{shard.stem}.*.trees.parquet", shard.summary, "generated.*.trees.parquet", "summary.json"
    )  # fmt: skip
    for pattern in mine:  # every tree file here is generate's (others were refused above)
        for f in out.glob(pattern):
            f.unlink()
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(exc, (MemoryError, oom)) or (
        isinstance(exc, RuntimeError) and "allocate memory" in str(exc)
    )


def _root_tokens(
    tokenizer, n_node_tokens: int, tokens: list[int] | None, root: tuple[float, ...] | None
) -> tuple[np.ndarray | None, float]:
    """The root tokens every jet starts from (None: sampled) and the root rapidity: from
    ``root`` = (pT, eta, mass) when given, else the given ``tokens``."""
    if root is not None:
        token, root_y = root_condition_tokens(tokenizer, *root)
        return np.array([token], np.int64), root_y
    if tokens is None:
        return None, 0.0
    out = np.asarray(tokens, np.int64).reshape(-1)
    if len(out) == 0 or np.any((out < 0) | (out >= n_node_tokens)):
        raise SettingError(f"root tokens must be node tokens in [0, {n_node_tokens})")
    return out, 0.0


def _check_sources(baseline, root_tokens, root, prefix, depth, nodes, completions) -> None:
    """What a generation starts from: sampled roots, given roots, the bigram baseline's,
    or real prefixes; combinations that contradict each other are refused in one line."""
    if baseline not in (None, "bigram"):
        raise SettingError(f"--baseline must be 'bigram', got {baseline!r}")
    if baseline is not None and (root_tokens is not None or root is not None):
        raise SettingError("--baseline samples its own roots; it takes no --root or --root-tokens")
    if prefix is not None:
        check_prefix_settings(depth, nodes, completions)
        if baseline is not None or root_tokens is not None or root is not None:
            raise SettingError(
                "--prefix starts from real roots: no --baseline, --root or --root-tokens"
            )


def _check_mode(ckpt: Path, flat: bool, baseline, root_tokens, root, prefix) -> None:
    """A flat-mode model samples particles: it has no roots, baseline trees or tree to continue."""
    if flat and (baseline is not None or root_tokens is not None or root is not None):
        raise SettingError(
            f"{ckpt}: a flat-mode model generates particles; --baseline, --root and "
            "--root-tokens are for tree-mode models"
        )
    if flat and prefix is not None:
        raise SettingError(
            f"{ckpt}: a flat-mode model has no tree to continue; --prefix needs a tree-mode model"
        )


def generate(
    ckpt: str | Path,
    n_jets: int | None,
    out_dir: str | Path,
    *,
    batch_size: int = 1024,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    max_nodes: int | None = None,
    root_tokens: list[int] | None = None,
    root: tuple[float, ...] | None = None,
    tokenizer: str | Path | None = None,
    shard_size: int = 100_000,
    max_attempts: float = 2.0,
    use_cache: bool = True,
    particle_mass: str = "pion",
    baseline: str | None = None,
    resolution: bool = True,
    prefix=None,
    prefix_depth: int | None = None,
    prefix_nodes: int | None = None,
    completions: int = 1,
    shard: Shard | str | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``n_jets`` complete trees into ``out_dir``; returns the run summary.

    Tree-mode trees are decoded top-down, every split a two-body decay of its decoded parent
    (:func:`~jetevo.tokenize.decode.decode_tree`: four-momentum is conserved exactly and
    particles keep their decoded masses); flat-mode particles get ``particle_mass``.

    ``baseline="bigram"``: sample from the checkpoint's count baselines instead of the
    transformer (:mod:`jetevo.generate.bigram`), everything else alike. ``resolution``:
    apply the resolution scale stored in the checkpoint (:mod:`jetevo.tokenize.resolution`;
    checkpoints from before it have none).

    ``prefix``: tree or token files of real jets to continue (tree mode): each jet is kept
    down to ``prefix_depth`` (or for its first ``prefix_nodes`` expansions) and completed
    ``completions`` times (:mod:`jetevo.generate.prefix`); ``n_jets`` then caps the number
    of prefix jets (None: all). A prefix jet whose kept part alone does not fit the model's
    context is skipped and counted (``prefix_too_long``).

    ``shard``: :class:`Shard` (or ``"K/N"``): this process makes shard K of N of the run, its
    share of the jets (entries numbered across the whole run; with ``prefix``, its share of
    the prefix jets), from its own seed stream, into files and a summary of its own in the
    shared ``out_dir`` (``generated-sKKKKofNNNN.*``, ``summary-sKKKKofNNNN.json``).

    Batches are started with ~12% headroom for runaway jets; complete trees beyond
    ``n_jets`` are not written and counted as ``surplus``. Runaway jets (stopped by
    ``max_nodes``) are counted and replaced by new attempts, up to ``max_attempts`` x
    ``n_jets`` jets in all; if that is not enough, the trees made
    so far are written, the summary says so, and :class:`GenerationError` is raised.
    """
    from jetevo.model.checkpoint import count_baselines, load_model, model_tokenizer

    if prefix is None and n_jets is None:
        raise SettingError("--n-jets is needed (it is optional only with --prefix)")
    _check_settings(
        1 if n_jets is None else n_jets, batch_size, temperature, particle_mass, device, top_k,
        max_nodes, shard_size,
    )  # fmt: skip
    _check_sources(baseline, root_tokens, root, prefix, prefix_depth, prefix_nodes, completions)
    ckpt = Path(ckpt)
    model = load_model(ckpt).to(device)
    flat = model.cfg.mode == "flat"
    _check_mode(ckpt, flat, baseline, root_tokens, root, prefix)
    tok = model_tokenizer(model, ckpt, tokenizer)
    if tok.features.particles_only != flat:
        raise InputError(
            ckpt, f"a {model.cfg.mode}-mode model with tokenizer feature set {tok.feature_set}"
        )
    cfg = model.cfg
    roots_given, root_y = _root_tokens(tok, cfg.vocab.n_node_tokens, root_tokens, root)
    shard = Shard.parse(shard) if isinstance(shard, str) else (shard or Shard())
    prefix_jets, lo, hi = _this_share(shard, prefix, tok, n_jets)

    own_seed = shard.seed(seed)
    generator = torch.Generator(device).manual_seed(own_seed)
    rng = np.random.default_rng(own_seed)
    res = resolution_for(model, tok, resolution and not flat)
    scale = res.log_pt_min if np.isfinite(res.log_pt_min) else None
    bigram = count_baselines(model, ckpt) if baseline == "bigram" else None
    if flat:
        limit_nodes = particle_limit(cfg.max_len, max_nodes)
    else:
        limit_nodes = node_limit(cfg.max_len, max_nodes)
    settings = {
        "generator": baseline or ("flat transformer" if flat else "transformer"),
        "resolution_pt": None if scale is None else float(np.exp(scale)),
        "particle_mass": particle_mass if flat else "decoded",
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "batch_size": batch_size,
        "max_nodes" if not flat else "max_particles": limit_nodes,
        "root_tokens": None if roots_given is None else roots_given.tolist(),
        "root_rapidity": root_y,
    }
    if prefix_jets is not None:
        settings.update(
            prefix=[str(f.resolve()) for f in prefix_jets.files], prefix_depth=prefix_depth,
            prefix_nodes=prefix_nodes, completions=completions,
        )  # fmt: skip
    # what every shard of one run shares (a folder never mixes shards of two runs)
    run = {"model": str(ckpt.resolve()), "n_jets": n_jets, "shards": shard.count, **settings}
    if not shard.whole:
        settings.update(shard=[shard.index, shard.count], shard_seed=own_seed)
    out = _output_folder(out_dir, shard, run)  # only once every setting is known to be usable
    meta = {
        "algorithm": "generated",
        "model": str(ckpt),
        "tokenizer": tok.identity,
        "scheme": None,
        **settings,
    }
    plan = _Plan(
        model, tok, flat, bigram, rng, res, roots_given, root_y, limit_nodes,
        dict(temperature=temperature, top_k=top_k, max_nodes=max_nodes, generator=generator,
             use_cache=use_cache),
        particle_mass, ckpt.name, meta,
    )  # fmt: skip
    counts = dict.fromkeys(("written", "attempted", "runaway", "empty", "surplus", "nodes",
                            "resolved", "prefix_too_long"), 0)  # fmt: skip
    if prefix_jets is None:
        requested = hi - lo
    else:
        requested = len(prefix_jets) * completions
    limit = int(np.ceil(max_attempts * requested))
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=requested, unit="jet", desc="generate")
    writer = ShardedTreeWriter(out, shard.stem, shard_size)
    try:
        with writer:
            if prefix_jets is None:
                _sample_unconditional(plan, requested, lo, batch_size, limit, writer, counts, bar)
            else:
                pairs = _PrefixPairs(prefix_jets, completions, prefix_depth, prefix_nodes)
                _sample_completions(plan, pairs, batch_size, limit, writer, counts, bar)
    except BaseException as exc:
        for name in writer.files:  # no partial sample under final names: this run's shards go
            (out / name).unlink(missing_ok=True)
        if _out_of_memory(exc):
            raise SettingError(
                f"--batch-size {batch_size}: a batch does not fit in memory; use a smaller one"
            ) from None
        raise
    files = writer.files
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = _summary(counts, requested, seconds, device, files, settings)
    if prefix_jets is not None:
        summary.update(prefix_jets=len(prefix_jets), prefix_too_long=counts["prefix_too_long"])
    if not shard.whole:
        summary["run"] = run
    write_json(out / shard.summary, summary, indent=1)
    expected = requested - counts["prefix_too_long"] * completions
    if counts["written"] < expected:
        raise GenerationError(
            f"{out / shard.summary}: only {counts['written']} of {expected} jets complete after "
            f"{counts['attempted']} attempts; "
            f"{counts['runaway']} runaway jets hit the limit of {limit_nodes}"
            + (f", {counts['empty']} ended before a particle" if counts["empty"] else "")
        )
    return summary


def _this_share(shard: Shard, prefix, tokenizer, n_jets: int | None):
    """The prefix jets (None without a prefix) and the [lo, hi) of the jets (or prefix jets)
    this shard makes; refused in one line when it gets none."""
    prefix_jets = None if prefix is None else read_prefix(prefix, tokenizer, n_jets)
    lo, hi = shard.share(int(n_jets or 0) if prefix_jets is None else len(prefix_jets))
    if hi <= lo:
        raise SettingError(f"--shard {shard.index}/{shard.count}: this shard gets no jets")
    if prefix_jets is not None and not shard.whole:
        prefix_jets = prefix_jets.select(np.arange(lo, hi))
    return prefix_jets, lo, hi


def _summary(counts: dict, requested: int, seconds: float, device: str, files, settings) -> dict:
    """The run's accounting (``summary.json``)."""
    written, attempted, nodes = counts["written"], counts["attempted"], counts["nodes"]
    return {
        "n_requested": requested,
        "n_written": written,
        "attempted": attempted,
        "runaway": counts["runaway"],
        "runaway_fraction": counts["runaway"] / max(attempted, 1),
        "empty": counts["empty"],
        "resolved_to_particles": counts["resolved"],
        "surplus": counts["surplus"],
        "nodes": nodes,
        "mean_nodes_per_tree": nodes / max(written, 1),
        "seconds": round(seconds, 3),
        "trees_per_s": round(written / seconds, 1),
        "nodes_per_s": round(nodes / seconds, 1),
        "device": device,
        "files": files,
        **settings,
    }


def _sample_unconditional(plan, n_jets, first_entry, batch_size, limit, writer, counts, bar):
    """Batches of new jets (entries from ``first_entry``) until ``n_jets`` are written or
    ``limit`` attempts are spent."""
    while counts["written"] < n_jets and counts["attempted"] < limit:
        need = n_jets - counts["written"]
        # headroom for runaway jets, so that a small refill batch (with its own long
        # tail of steps) is rarely needed; complete jets beyond the request are counted
        b = min(batch_size, limit - counts["attempted"], need + need // 8 + 4)
        table, done = _generate_batch(plan, b, need, first_entry + counts["written"])
        if table is not None:
            writer.write(table)
        for k, v in done.items():
            counts[k] += v
        if bar is not None:
            bar.update(done["written"])


@dataclass
class _PrefixPairs:
    """The (prefix jet, completion) pairs of a ``--prefix`` run, numbered jet-major
    (``jet * completions + completion``), which is the order they are written in."""

    jets: PrefixJets
    completions: int
    depth: int | None
    nodes: int | None


def _sample_completions(plan, pairs: _PrefixPairs, batch_size, limit, writer, counts, bar) -> None:
    """Complete every pair, a batch at a time; a batch's runaways are re-sampled before it
    is written, so the output keeps the pair order."""
    kept = pairs.jets.expansions(pairs.depth, pairs.nodes)
    more = kept < pairs.jets.expansions(None, None)  # splits left to sample
    # START + the kept expansions must fit the context, and their nodes the node limit, with
    # room for one more split unless the jet is whole
    fits = (kept + 1 + more <= plan.model.cfg.max_len) & (2 * (kept + more) + 1 <= plan.limit_nodes)
    counts["prefix_too_long"] = int(np.count_nonzero(~fits))
    todo_all = np.flatnonzero(np.repeat(fits, pairs.completions))
    for start in range(0, len(todo_all), batch_size):
        todo = todo_all[start : start + batch_size]
        tables, ids = [], []
        while len(todo) and counts["attempted"] < limit:
            todo = todo[: limit - counts["attempted"]]
            table, done_ids, runaway_ids, made = _complete_batch(plan, pairs, todo)
            counts["attempted"] += len(todo)
            counts["runaway"] += len(runaway_ids)
            counts["written"] += len(done_ids)
            counts["nodes"] += made["nodes"]
            counts["resolved"] += made["resolved"]
            if table is not None:
                tables.append(table)
                ids.append(done_ids)
            if bar is not None:
                bar.update(len(done_ids))
            todo = runaway_ids
        if tables:
            order = np.argsort(np.concatenate(ids), kind="stable")
            writer.write(pa.concat_tables(tables).take(pa.array(order)))
        if len(todo):  # attempts spent: the rest are not made
            return


def _complete_batch(plan: _Plan, pairs: _PrefixPairs, ids: np.ndarray):
    """Complete the pairs ``ids``: the table of the complete ones, their ids, the runaways'
    ids, and the nodes written and pseudojets resolved to particles."""
    jets = pairs.jets.select(ids // pairs.completions)
    trees = sample_trees(
        plan.model, len(ids), **plan.sampling, resolution=plan.resolution,
        teacher=jets.teacher(pairs.depth, pairs.nodes),
    )  # fmt: skip
    rows = trees.batch_rows
    if not len(trees):
        return None, ids[rows], ids[trees.runaway], {"nodes": 0, "resolved": trees.n_resolved}
    assert trees.teacher_node is not None
    real = trees.teacher_node >= 0
    tree_of = np.repeat(np.arange(len(trees)), np.diff(trees.offsets))
    first = jets.topology.offsets[:-1][rows]
    p_real = np.zeros((len(real), 4))
    p_real[real] = jets.p[first[tree_of[real]] + trees.teacher_node[real]]
    known = (real, p_real)
    p = decode_tree(plan.tokenizer, trees.token, trees, known)
    table = generated_table(trees, p, jets.jets.select(rows), plan.metadata, jets.precision)
    for name, values in jets.kinematics.items():  # the real root's, as stored
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values[rows]))
    n_real = np.bincount(tree_of[real], minlength=len(trees))
    extra = {
        "completion": ids[rows] % pairs.completions,
        "prefix_depth": np.full(len(trees), -1 if pairs.depth is None else pairs.depth),
        "prefix_splits": (n_real - 1) // 2,
    }
    for name, values in extra.items():
        field = pa.field(name, pa.int32(), nullable=False)
        table = table.append_column(field, pa.array(values.astype(np.int32)))
    made = {"nodes": int(trees.offsets[-1]), "resolved": trees.n_resolved}
    return table, ids[rows], ids[trees.runaway], made


@dataclass
class _Plan:
    """Everything a generation batch needs, fixed for the whole run."""

    model: Any
    tokenizer: Any
    flat: bool
    bigram: Any
    rng: np.random.Generator
    resolution: Resolution
    roots: np.ndarray | None
    root_y: float
    limit_nodes: int
    sampling: dict
    particle_mass: str
    source: str
    metadata: dict


def _generate_batch(plan: _Plan, b: int, need: int, entry0: int) -> tuple[pa.Table | None, dict]:
    """Sample ``b`` jets, keep at most ``need`` complete ones (entries from ``entry0``):
    their table, and the counts of what happened."""
    tok = plan.tokenizer
    done = {"attempted": b, "resolved": 0, "empty": 0}
    if plan.flat:
        samples = sample_flat(plan.model, b, **plan.sampling)
        keep = min(len(samples), need)
        done.update(runaway=len(samples.runaway), empty=len(samples.empty), written=keep,
                    surplus=len(samples) - keep)  # fmt: skip
        if not keep:
            return None, {**done, "nodes": 0}
        samples = samples.first(keep)
        p = decode_particles(tok, samples.token, plan.particle_mass)
        table = flat_generated_table(samples, p, tok, entry0, plan.source, plan.metadata)
        return table, {**done, "nodes": 2 * len(samples.token) - keep}
    if plan.bigram is not None:
        trees = sample_bigram_trees(
            plan.bigram, tok.vocab, b, plan.rng, plan.limit_nodes, resolution=plan.resolution
        )
    else:
        roots = None if plan.roots is None else np.resize(plan.roots, b)
        trees = sample_trees(
            plan.model, b, **plan.sampling, resolution=plan.resolution, root_tokens=roots
        )
    keep = min(len(trees), need)
    done.update(runaway=len(trees.runaway), resolved=trees.n_resolved, written=keep,
                surplus=len(trees) - keep)  # fmt: skip
    if not keep:
        return None, {**done, "nodes": 0}
    p = boost_rapidity(decode_tree(tok, trees.token, trees), plan.root_y)
    jets = JetColumns.constant("generated", plan.source, np.arange(entry0, entry0 + len(trees)))
    table = generated_table(trees, p, jets, plan.metadata).slice(0, keep)
    return table, {**done, "nodes": int(trees.offsets[keep])}


def format_summary(s: dict) -> str:
    """The one line ``jetevo generate`` prints about a run."""
    return (
        f"{s['n_written']} trees ({s['mean_nodes_per_tree']:.1f} nodes each) in "
        f"{s['seconds']:.1f}s: {s['trees_per_s']:.1f} trees/s, {s['nodes_per_s']:.0f} nodes/s; "
        f"{s['runaway']} runaway trees replaced"
    )
