"""``ol-jax demo`` end to end on a short run, and the CLI's errors."""

import json
import os
import shutil
from pathlib import Path

import pytest

from ol_jax.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_demo_writes_plots_versions_and_summary(tmp_path, capsys):
    (tmp_path / "glyph-demo").mkdir()
    shutil.copy(
        REPO / "networks" / "glyph-demo" / "config.yaml", tmp_path / "glyph-demo"
    )
    code = main(
        ["demo", "--root", str(tmp_path), "--cycles", "3", "--glyphs-per-cycle", "4"]
    )
    assert code == 0
    runs = os.listdir(tmp_path / "glyph-demo" / "runs")
    assert len(runs) == 1
    run_dir = tmp_path / "glyph-demo" / "runs" / runs[0]
    for name in ("scores.png", "glyphs_before_after.png", "run_metadata.json"):
        assert (run_dir / name).stat().st_size > 0
    summary = json.loads((run_dir / "demo_summary.json").read_text())
    assert len(summary["scores"]) == 4 and summary["personality"] == "bold"
    # 12 ratings, cold start at 3: one initial version + 10 updates.
    assert summary["versions"] == 11
    assert any(d.startswith("weights_v") for d in os.listdir(run_dir))
    assert "held-out match score" in capsys.readouterr().out


def test_demo_missing_network_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--root", str(tmp_path)]) == 2
    assert "no network config" in capsys.readouterr().err


def test_unknown_personality_is_rejected():
    with pytest.raises(SystemExit):
        main(["demo", "--personality", "grumpy"])
