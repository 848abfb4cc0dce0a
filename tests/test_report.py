"""The HTML report: escaped model text, offline rendering, and a headless-Chromium screenshot."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from difflens.cli import main
from difflens.io.artifacts import write_json
from difflens.report.page import render_report

EVIL = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def fake_adl_run(tmp_path):
    """A run directory with every ADL artifact, model text replaced by hostile HTML."""
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "run.json", {"kind": "adl", "config": {"note": EVIL}})
    readout = {"tokens": [EVIL, "cake", "oven"], "ids": [1, 2, 3], "probs": [0.5, 0.3, 0.2]}
    layer = {"positions": [readout] * 3, "mean": readout, "negative": readout,
             "base_mean": readout, "ft_mean": readout, "norm": [0.1, 2.0, 1.5],
             "relative_norm": 0.05, "no_difference": False}
    write_json(run / "logit_lens.json", {"layers": {"0": layer, "1": layer}})
    write_json(run / "summary.json", {"base": EVIL, "finetuned": "ft", "layer": 1,
                                      "n_texts": 10, "k": 3, "notes": [EVIL]})
    write_json(run / "patchscope.json", {"chosen": {"scale": 1.0, "coherent_tokens": [EVIL]},
                                         "scales": [{"scale": 1.0, "tokens": [EVIL]}]})
    write_json(run / "steering.json", {
        "found": True, "alpha": 0.5,
        "search": {"probes": [{"alpha": 0.5, "coherent_fraction": 1.0},
                              {"alpha": 1.0, "coherent_fraction": 0.2}]},
        "samples": {"prompts": [EVIL], "steered": [EVIL], "unsteered": [EVIL]}})
    write_json(run / "similarity.json", {
        "steered_finetune": {"mean": 0.3, "ci_low": 0.25, "ci_high": 0.35},
        "unsteered_finetune": {"mean": 0.05, "ci_low": 0.01, "ci_high": 0.09},
        "p_value": 0.001, "steered_above_unsteered": True})
    write_json(run / "causal.json", {
        "finetune": {"delta_ce": 0.4, "baselines": {"random": {"delta_ce": [0.0, 0.01]}}},
        "reference": {"delta_ce": -0.1, "baselines": {"random": {"delta_ce": [0.0, 0.02]}}}})
    return run


def test_report_escapes_all_model_text(tmp_path):
    path = render_report(fake_adl_run(tmp_path))
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_command_and_bad_dir(tmp_path, capsys):
    run = fake_adl_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a difflens run directory" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (scripts/test.sh "
                    "installs it with apt-get)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = render_report(fake_adl_run(tmp_path))
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to almost nothing; a rendered report with charts does not.
    assert len(data) > 20_000, len(data)
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile2'}",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert "Logit lens at layer 1" in dom and "<script>alert" not in dom
