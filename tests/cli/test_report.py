"""``ol-jax report``: plots from metrics.jsonl and the accuracy matrix, and its
errors."""

import json
import re

import pytest

from ol_jax.cli import main


def _write_metrics(run_dir, n=6, extra=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for t in range(1, n + 1):
            record = {
                "turn": t,
                "loss": 3.0 / t,
                "learning_rate": 5e-6 if t % 2 else 1e-6,
                "kl_to_base": 0.001 * t,
                "anchor_perplexity": 20.0 + 0.1 * t,
                "recent_loss": 2.0,
                "anchor_regression": 0.005 * t,
                "is_fact": t % 2 == 1,
                "response": "text is not plotted",
                "custom_metric": float(t),
            }
            f.write(json.dumps({**record, **(extra or {})}) + "\n")
        f.write("\n")  # a trailing blank line is fine


def test_report_writes_one_png_per_group_and_the_matrix(tmp_path, capsys):
    run = tmp_path / "run"
    _write_metrics(run)
    matrix = {
        "facts": ["Zorblax lives in Varnholm", "Tavi owns a teal canoe", "x"],
        "matrix": [[1.0, None, None], [0.5, 1.0, None], [1.0, 0.0, 1.0]],
    }
    (run / "accuracy_matrix.json").write_text(json.dumps(matrix))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    for name in ("stability", "plasticity", "forgetting", "other", "accuracy_matrix"):
        path = run / f"{name}.png"
        assert path.stat().st_size > 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(path) in out
    # BWT = ((1.0 - 1.0) + (0.0 - 1.0)) / 2; forgetting = (0 + 1) / 2.
    assert "3 facts: backward transfer -0.500, forgetting 0.500" in out


def test_non_finite_values_and_sparse_keys_are_plotted(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        '{"turn": 1, "loss": NaN, "learning_rate": 1e-6}',
        '{"turn": 2, "loss": Infinity, "anchor_regression": 0.1}',
        '{"turn": 3, "loss": 1.0, "learning_rate": 2e-6, "is_fact": 1.0}',
    ]
    (run / "metrics.jsonl").write_text("\n".join(rows))
    assert main(["report", str(run)]) == 0
    assert sorted(p.name for p in run.glob("*.png")) == [
        "forgetting.png",
        "plasticity.png",
    ]


def test_only_present_groups_and_out_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"turn": t, "loss": 1.0 / t}) for t in (1, 2, 3))
    )
    out = tmp_path / "plots"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plasticity.png"]
    assert not list(run.glob("*.png"))
    assert main(["report", str(run)]) == 0
    assert [p.name for p in run.glob("*.png")] == ["plasticity.png"]


@pytest.mark.parametrize(
    "lines,match",
    [
        (['{"turn": 1, "loss": 1.0}', "{not json"], r"jsonl:2: not valid JSON"),
        (['{"turn": 1, "loss": 1.0}', "", "[1, 2]"], r"jsonl:3: expected a JSON obj"),
        (['{"loss": 1.0}'], r"metrics\.jsonl:1: expected an integer 'turn'"),
        (['{"turn": "3", "loss": 1.0}'], r"metrics\.jsonl:1: expected an integer"),
        (['{"turn": 1, "note": "x"}'], "no numeric metric"),
    ],
)  # fmt: skip
def test_malformed_metrics_name_the_line(tmp_path, capsys, lines, match):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ol-jax report: error:")
    assert re.search(match, err), err


def test_non_utf8_line_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"turn": 1, "loss": 1.0}\n{"turn": 2\xff}\n')
    assert main(["report", str(run)]) == 2
    assert "metrics.jsonl:2: not UTF-8 (byte 11" in capsys.readouterr().err


def test_missing_folder_file_and_not_a_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["report", str(tmp_path / "file")]) == 2
    assert "must be a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "data,match",
    [
        ({"facts": ["a"], "matrix": [[0.5, 0.1]]}, "row 0 must have 1"),
        ({"facts": ["a", "b"], "matrix": [[1.0]]}, "one name per matrix row"),
        ({"matrix": [[1.0, None], [None, 1.0]]}, r"R\[1, 0\]"),
        ({"matrix": [["x"]]}, r"matrix\[0\]\[0\] must be a number"),
        ([1, 2], "'matrix' list"),
    ],
)
def test_bad_accuracy_matrix(tmp_path, capsys, data, match):
    run = tmp_path / "run"
    _write_metrics(run, n=2)
    (run / "accuracy_matrix.json").write_text(json.dumps(data))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "accuracy_matrix.json" in err
    assert re.search(match, err), err


def test_help_lists_report(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "report" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "RUN_DIR" in capsys.readouterr().out


def test_edit_evaluations_are_plotted_in_their_own_panel(tmp_path, capsys):
    run = tmp_path / "run"
    _write_metrics(run, n=4)
    with open(run / "metrics.jsonl", "a") as f:
        for t, rate in ((2, 0.5), (4, 0.9)):
            row = {"turn": t, "kind": "edit_eval", "facts": 2, "efficacy": 1,
                   "efficacy_rate": rate, "generalization_rate": rate - 0.1,
                   "locality": 1.0, "neighbour_kl": 0.01}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    assert main(["report", str(run)]) == 0
    assert (run / "editing.png").read_bytes()[:4] == b"\x89PNG"
    assert str(run / "editing.png") in capsys.readouterr().out
