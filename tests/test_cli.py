"""Command-line parsing details that users trip over."""

from __future__ import annotations

import pytest

from jetevo.cli import _reclaim_overrides, build_parser


def parse(*argv: str):
    parser = build_parser()
    args = parser.parse_args(list(argv))
    _reclaim_overrides(args, parser)
    return args


def test_trailing_overrides_are_not_read_as_files(tmp_path):
    real = tmp_path / "lr=odd_but_real.parquet"  # an existing file that looks like an override
    real.touch()
    args = parse(
        "train", "model.n_layer=3", "--config", "c.yaml", "--out", "run",
        "--train", "a.parquet", str(real),
        "--val", "b.parquet", "train.max_steps=600", "train.lr=1e-4",
    )  # fmt: skip
    assert args.train == ["a.parquet", str(real)] and args.val == ["b.parquet"]
    assert args.overrides == ["model.n_layer=3", "train.max_steps=600", "train.lr=1e-4"]

    tok = parse("tokenizer", "train", "--out", "t.ckpt", "--trees", "x.parquet", "n_codes=64")
    assert tok.trees == ["x.parquet"] and tok.overrides == ["n_codes=64"]


def test_a_file_list_of_only_overrides_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("train", "--config", "c", "--out", "r", "--train", "a", "--val", "train.lr=5")
    assert exc.value.code == 2
    assert "--val needs at least one file" in capsys.readouterr().err
