"""``ich3d roc``: table, JSON schema, plot, and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ich3d.cli.main import main
from ich3d.stats.delong import delong_roc
from ich3d.stats.roc_table import format_p


def _write(tmp_path: Path, df: pd.DataFrame, name: str = "pred.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def pred_df() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 80
    y = np.r_[np.ones(30, int), np.zeros(50, int)]
    return pd.DataFrame(
        {
            "key": [f"{h:016x}" for h in rng.integers(0, 2**62, n)],
            "label": y,
            "lstm": y * 1.5 + rng.normal(size=n),
            "max": np.round(y * 0.5 + rng.normal(size=n), 1),
            "svm": y * 1.0 + rng.normal(size=n),
        }
    )


def test_happy_path(tmp_path: Path, pred_df: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _write(tmp_path, pred_df)
    out_json, out_png = tmp_path / "out" / "roc.json", tmp_path / "roc.png"
    rc = main(["roc", str(csv), "--json", str(out_json), "--plot", str(out_png)])
    out = capsys.readouterr().out
    assert rc == 0

    expected = delong_roc(pred_df["label"], pred_df[["lstm", "max", "svm"]].to_numpy(), ["lstm", "max", "svm"])
    best = expected.names[expected.best]
    assert best == "lstm"
    lines = out.splitlines()
    assert "| method | AUC | 95% CI | p vs best (lstm) |" in lines
    row = next(line for line in lines if line.startswith("| max |"))
    m = expected.models[1]
    assert row == f"| max | {m.auc:.3f} | {m.ci_lower:.3f} - {m.ci_upper:.3f} | {expected.pair('max', 'lstm').p:.3f} |"
    assert "| lstm | " in out and "| best |" in out
    pair_rows = [line for line in lines if line.count("|") == 8 and not line.startswith(("| a ", "| ---"))]
    assert [r.split("|")[1:3] for r in pair_rows] == [
        [" lstm ", " max "],
        [" lstm ", " svm "],
        [" max ", " svm "],
    ]
    # raw p, then Holm-adjusted p (3 tests: the smallest p times 3, then max-accumulated)
    raw = [expected.pair(a, b).p for a, b in (("lstm", "max"), ("lstm", "svm"), ("max", "svm"))]
    order = np.argsort(raw)
    holm = np.empty(3)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        holm[i] = running
    for r, p, q in zip(pair_rows, raw, holm, strict=True):
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[5] == format_p(p) and cells[6] == format_p(q)
    assert "3 paired tests on the same cases" in out
    assert "key" not in out  # the non-numeric key column is not a method

    d = json.loads(out_json.read_text())
    assert list(d) == ["n_pos", "n_neg", "models", "pairs"]
    assert (d["n_pos"], d["n_neg"]) == (30, 50)
    assert [list(mm) for mm in d["models"]] == [["name", "auc", "ci_lower", "ci_upper", "var"]] * 3
    assert [list(p) for p in d["pairs"]] == [["a", "b", "z", "p", "diff_ci_lower", "diff_ci_upper"]] * 3
    assert [(p["a"], p["b"]) for p in d["pairs"]] == [("lstm", "max"), ("lstm", "svm"), ("max", "svm")]
    for got, want in zip(d["models"], expected.models, strict=True):
        assert got["auc"] == pytest.approx(want.auc, abs=1e-12)
        assert got["var"] == pytest.approx(want.var, abs=1e-15)
    p0 = d["pairs"][0]
    sd = (p0["diff_ci_upper"] - p0["diff_ci_lower"]) / (2 * 1.959963984540054)
    assert p0["z"] == pytest.approx((d["models"][0]["auc"] - d["models"][1]["auc"]) / sd, rel=1e-9)

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000


def test_label_col_and_level(tmp_path: Path, pred_df: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _write(tmp_path, pred_df.rename(columns={"label": "any"}))
    out_json = tmp_path / "r.json"
    assert main(["roc", str(csv), "--label-col", "any", "--level", "0.9", "--json", str(out_json)]) == 0
    assert "90% CI" in capsys.readouterr().out
    d = json.loads(out_json.read_text())
    want = delong_roc(pred_df["label"], pred_df["lstm"], level=0.9).models[0]
    assert d["models"][0]["ci_lower"] == pytest.approx(want.ci_lower, abs=1e-12)


def _bad_cases(df: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str], str]]:
    nan_scores = df.copy()
    nan_scores.loc[3, "svm"] = np.nan
    bad_labels = df.copy()
    bad_labels.loc[5, "label"] = 2
    text_labels = df.copy()
    text_labels["label"] = np.where(df["label"] == 1, "yes", "no")
    one_class = df[df["label"] == 0]
    one_pos = pd.concat([df[df["label"] == 0], df[df["label"] == 1].iloc[:1]])
    stray_text = df.copy().astype({"svm": object})
    stray_text.loc[7, "svm"] = "oops"
    only_key = df[["key", "label"]]
    return {
        "no_label_column": (df.drop(columns="label"), [], "no label column 'label'"),
        "labels_not_01": (bad_labels, [], "labels must be 0 or 1"),
        "text_labels": (text_labels, [], "labels must be 0 or 1"),
        "nan_scores": (nan_scores, [], "score column 'svm' has 1 missing/NaN value"),
        "one_class": (one_class, [], "all 50 labels are negative"),
        "one_positive": (one_pos, [], "at least 2 positive and 2 negative"),
        "stray_text_in_scores": (stray_text, [], "column 'svm' is mostly numbers"),
        "no_score_column": (only_key, [], "no numeric score column"),
        "bad_level": (df, ["--level", "95"], "confidence level"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no_label_column",
        "labels_not_01",
        "text_labels",
        "nan_scores",
        "one_class",
        "one_positive",
        "stray_text_in_scores",
        "no_score_column",
        "bad_level",
    ],
)
def test_bad_input_one_line_exit_2(
    case: str, tmp_path: Path, pred_df: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    df, extra, message = _bad_cases(pred_df)[case]
    csv = _write(tmp_path, df)
    out_json = tmp_path / "never.json"
    rc = main(["roc", str(csv), "--json", str(out_json), *extra])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("ich3d: error: ")
    assert message in err[0]
    assert captured.out == ""
    assert not out_json.exists()


def test_missing_and_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["roc", str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["roc", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable CSV" in err


def test_plot_helpers(tmp_path: Path, pred_df: pd.DataFrame) -> None:
    from ich3d.evaluation.report.plots import legend_label, plot_roc, roc_curves

    assert legend_label("lstm", 0.91234, 0.85, 0.9712) == "lstm 0.912 [0.850, 0.971]"
    names = ["lstm", "max", "svm"]
    y, s = pred_df["label"].to_numpy(), pred_df[names].to_numpy()
    res = delong_roc(y, s, names)
    curves = roc_curves(y, s)
    for (fpr, tpr), auc in zip(curves, res.aucs, strict=True):
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
        # trapezoids under the curve (diagonal steps at ties) = Mann-Whitney AUC with ties 1/2
        assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auc, abs=1e-12)
    out = plot_roc(curves, res, tmp_path / "sub" / "roc.png", title="test split")
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 curves for 3 methods"):
        plot_roc(curves[:2], res, tmp_path / "x.png")
