"""Settings that cannot be used, broken YAML and resumes of another run: one line, exit 2.

Every config dataclass goes through one validation layer (:func:`jetevo.config.build`,
:func:`jetevo.config.check_fields`); a resume (``jetevo train``, ``jetevo tokenizer train``)
must continue the run it finds with the inputs that run was started with.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TOKENIZER

from jetevo.cli import main
from jetevo.config import apply_overrides, load_config
from jetevo.errors import InputError, SettingError
from jetevo.model.gpt import ModelConfig
from jetevo.model.train import TrainConfig, parse_config
from jetevo.tokenize.tokenizer import Tokenizer, TokenizerConfig

TINY_RUN = (
    "model: {n_layer: 1, n_head: 2, n_embd: 32}\n"
    "train: {max_steps: 2, batch_size: 8, val_every: 2, val_batches: 1, warmup_steps: 1}\n"
)


def one_line_error(capsys, rc: int) -> str:
    """The stderr of a command that must have failed as a user error: exit 2, one line."""
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("jetevo ") and "\n" not in err, err
    return err


@pytest.fixture
def tiny_cfg(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RUN)
    return path


def train_cli(cfg, train, val, out, *overrides) -> int:
    args = ["train", "--config", str(cfg), "--train", str(train), "--val", str(val)]
    return main([*args, "--out", str(out), "--quiet", *overrides])


# ----------------------------------------------------------------- one validation layer
@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=abc", "train.lr takes a number > 0, got 'abc'"),
        ("train.max_steps=abc", "train.max_steps takes an integer >= 1, got 'abc'"),
        ("model.n_embd=abc", "model.n_embd takes an integer >= 1, got 'abc'"),
        ("train.batch_size=0", "train.batch_size takes an integer >= 1, got 0"),
        ("train.val_every=0", "train.val_every takes an integer >= 1, got 0"),
        ("train.max_steps=0", "train.max_steps takes an integer >= 1, got 0"),
        ("model.n_head=3", "model.n_embd (32) must be divisible by model.n_head (3)"),
        ("train.optimizer=sgd", "train.optimizer takes one of adamw, ranger, got 'sgd'"),
        ("model.bias=maybe", "model.bias takes true or false, got 'maybe'"),
        ("train.split_weights=[1,-1]", "train.split_weights takes a list of numbers >= 0"),
        ("train.bogus=1", "unknown train setting(s): train.bogus"),
        ("model.n_codes=64", "model.n_codes is the tokenizer's codebook size"),
        ("model.n_code_features=3", "model.n_code_features is the tokenizer's number of features"),
        ("model.output_group_size=48", "model.output_group_size (48) must divide"),
    ],
)
def test_train_settings_are_checked(override, expected, token_dir, tiny_cfg, tmp_path, capsys):
    rc = train_cli(tiny_cfg, token_dir, token_dir, tmp_path / "run", override)
    assert expected in one_line_error(capsys, rc)
    assert not (tmp_path / "run" / "model.ckpt").exists()


def test_numbers_yaml_reads_as_strings_are_numbers():
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: an override ``train.lr=1e-4`` is a
    learning rate all the same, and ``max_steps=1e3`` a whole number of steps."""
    cfg = apply_overrides({}, ["train.lr=1e-4", "train.max_steps=1e3", "model.dropout=0"])
    model, train = parse_config(cfg)
    assert train.lr == 1e-4 and isinstance(train.lr, float)
    assert train.max_steps == 1000 and isinstance(train.max_steps, int)
    assert model.dropout == 0.0 and isinstance(model.dropout, float)
    assert TokenizerConfig.from_dict({"lr": "1e-3"}).lr == 1e-3
    with pytest.raises(SettingError, match=r"train\.max_steps takes an integer"):
        parse_config(apply_overrides({}, ["train.max_steps=1.5"]))


def test_config_classes_check_their_fields_on_construction():
    with pytest.raises(
        SettingError, match=r"^model\.n_embd \(32\) must be divisible by model\.n_head \(3\)$"
    ):
        ModelConfig(n_embd=32, n_head=3)
    with pytest.raises(SettingError, match=r"train\.max_steps takes an integer >= 1, got 0"):
        TrainConfig(max_steps=0)
    with pytest.raises(SettingError, match=r"train\.lr takes a number > 0, got '1e-4'"):
        TrainConfig(lr="1e-4")  # type: ignore[arg-type]  # Python callers pass numbers
    with pytest.raises(SettingError, match="batch_size takes an integer >= 1, got 0"):
        TokenizerConfig(batch_size=0)
    with pytest.raises(SettingError, match=r"^unknown model setting\(s\): model\.n_heads"):
        parse_config({"model": {"n_heads": 4}})
    with pytest.raises(SettingError, match="train takes a mapping of settings"):
        parse_config({"train": 5})


@pytest.mark.parametrize(
    "override, expected",
    [
        ("n_codes=abc", "n_codes takes an integer >= 1, got 'abc'"),
        ("feature_weights=[1,2]", "feature_weights takes a list of 4 numbers > 0, got [1, 2]"),
        ("feature_weights=[1,2,0,1,1]", "feature_weights takes a list of 4 numbers > 0"),
        ("batch_size=0", "batch_size takes an integer >= 1, got 0"),
        ("checkpoint_every=0", "checkpoint_every takes an integer >= 1, got 0"),
        ("ema_decay=1.5", "ema_decay takes a number >= 0 and < 1, got 1.5"),
        ("n_code=8", "unknown tokenizer setting(s): n_code"),
    ],
)
def test_tokenizer_settings_are_checked(override, expected, tree_dir, tmp_path, capsys):
    ckpt = tmp_path / "tok.ckpt"
    tiny = [f"{k}={v}" for k, v in TINY_TOKENIZER.items()]
    args = ["tokenizer", "train", "--trees", str(tree_dir), "--out", str(ckpt), "--quiet"]
    rc = main([*args, *tiny, override])
    assert expected in one_line_error(capsys, rc)
    assert not ckpt.exists()


# ----------------------------------------------------------------- YAML errors
def test_yaml_errors_carry_the_line_number(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: 2\n  n_head: [4\ntrain:\n  lr: 1.0e-3\n")
    with pytest.raises(InputError, match=r"bad\.yaml: invalid YAML at line \d+: "):
        load_config(bad)
    tab = tmp_path / "tab.yaml"
    tab.write_text("train:\n  max_steps: 2\n\tlr: 1\n")
    with pytest.raises(InputError, match=r"tab\.yaml: invalid YAML at line 3: "):
        load_config(tab)
    args = ["train", "--config", str(tab), "--train", "a.parquet", "--val", "b.parquet"]
    err = one_line_error(capsys, main([*args, "--out", str(tmp_path / "run")]))
    assert "invalid YAML at line 3" in err
    with pytest.raises(SettingError, match=r"override 'train\.lr=\[1,': invalid YAML value"):
        apply_overrides({}, ["train.lr=[1,"])
    with pytest.raises(SettingError, match="train is a value"):
        apply_overrides({"train": 5}, ["train.lr=1"])


# ----------------------------------------------------------------- resuming another run
@pytest.fixture
def other_tokens(tiny_tokenizer, tree_dir, tmp_path):
    """Token files of another tokenizer with the same codebook size."""
    from jetevo.tokenize.tokens import encode_files

    torch.manual_seed(1)
    cfg = TokenizerConfig(**TINY_TOKENIZER)
    other = Tokenizer(
        cfg, tiny_tokenizer.standardizer, Tokenizer.build_model(cfg), root=tiny_tokenizer.root
    )
    other.save(tmp_path / "other.ckpt")
    other = Tokenizer.load(tmp_path / "other.ckpt")
    assert other.identity != tiny_tokenizer.identity
    encode_files(other, [tree_dir], tmp_path / "other_tokens")
    return tmp_path / "other_tokens"


def test_train_resumes_only_the_same_run(token_dir, other_tokens, tiny_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(tiny_cfg, token_dir, token_dir, run) == 0
    assert (run / "lightning" / "last.ckpt").exists() and (run / "run.json").exists()
    capsys.readouterr()
    # tokens of another tokenizer: it would finish a half-trained run on them, labelled B
    err = one_line_error(capsys, train_cli(tiny_cfg, other_tokens, other_tokens, run))
    assert "this run was started with other inputs" in err and "tokenizer " in err
    # another model size: it failed in load_state_dict with a traceback
    err = one_line_error(capsys, train_cli(tiny_cfg, token_dir, token_dir, run, "model.n_embd=16"))
    assert "model.n_embd 32 -> 16" in err
    err = one_line_error(capsys, train_cli(tiny_cfg, token_dir, token_dir, run, "train.lr=1e-2"))
    assert "train.lr 0.0003 -> 0.01" in err
    # the same run continues, further if asked
    assert train_cli(tiny_cfg, token_dir, token_dir, run, "train.max_steps=4") == 0
    assert torch.load(run / "model.ckpt", weights_only=False)["train"]["steps"] == 4
    # a run folder whose record is missing cannot be checked: refused, not guessed
    (run / "run.json").unlink()
    capsys.readouterr()
    err = one_line_error(capsys, train_cli(tiny_cfg, token_dir, token_dir, run))
    assert "run.json" in err and "start over" in err


def test_tokenizer_resumes_only_the_same_training(tree_dir, tmp_path, capsys):
    from jetevo.trees.format import tree_files

    ckpt = tmp_path / "tok.ckpt"
    tiny = [f"{k}={v}" for k, v in {**TINY_TOKENIZER, "max_steps": 2}.items()]
    args = ["tokenizer", "train", "--trees", str(tree_dir), "--out", str(ckpt), "--quiet"]
    assert main([*args, *tiny]) == 0
    identity = Tokenizer.load(ckpt).identity
    capsys.readouterr()
    # other settings: they were silently ignored (the checkpoint's were used)
    err = one_line_error(capsys, main([*args, *tiny, "lr=1.0e-3"]))
    assert "lr 0.0001 -> 0.001" in err and "started with other inputs" in err
    # other trees: the tokenizer silently went on learning on them
    one = tree_files(tree_dir)[0]
    other = ["tokenizer", "train", "--trees", str(one), "--out", str(ckpt), "--quiet"]
    err = one_line_error(capsys, main([*other, *tiny]))
    assert "--trees" in err
    assert Tokenizer.load(ckpt).identity == identity, "a refused resume leaves it as it was"
    # the same settings and trees: resumed, to the new max_steps
    assert main([*args, *tiny, "max_steps=3"]) == 0
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3 and state["config"]["max_steps"] == 3
    # a checkpoint that does not record its trees cannot be checked: refused
    del state["trees"]
    torch.save(state, ckpt)
    capsys.readouterr()
    err = one_line_error(capsys, main([*args, *tiny, "max_steps=4"]))
    assert "does not record the tree files" in err


def test_bad_model_config_in_a_checkpoint_is_an_input_error(tiny_tokenizer, tmp_path):
    from jetevo.model.checkpoint import load_model, save_model
    from jetevo.model.tree import JetEvolutionModel

    model = JetEvolutionModel(ModelConfig(n_codes=64, n_layer=1, n_head=2, n_embd=16))
    save_model(model, tmp_path / "m.ckpt")
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)
    state["config"]["n_head"] = 3
    torch.save(state, tmp_path / "m.ckpt")
    with pytest.raises(InputError, match=r"m\.ckpt: bad model config .*divisible"):
        load_model(tmp_path / "m.ckpt")
