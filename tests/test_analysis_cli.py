"""`python -m lora_research.analysis` on synthetic run folders (format lora_research.adapter/1)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_research.analysis.__main__ import main
from _adapter_fixtures import synthetic_run

D, LAYERS = 24, 3
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("section7")
    g = torch.Generator().manual_seed(0)
    base = {f"bert.encoder.layer.{l}.attention.self.{n}": torch.randn(D, D, generator=g)
            for l in range(LAYERS) for n in ("query", "value")}
    save_file({k + ".weight": v for k, v in base.items()}, str(root / "base.safetensors"))
    return {
        "root": root,
        "base": root / "base.safetensors",
        "r2": synthetic_run(root / "r2", n_layers=LAYERS, d=D, r=2, seed=0),
        "r8": synthetic_run(root / "r8", n_layers=LAYERS, d=D, r=8, alpha=32, seed=1),
        "r8b": synthetic_run(root / "r8b", n_layers=LAYERS, d=D, r=8, seed=2),
        "ft": synthetic_run(root / "ft", n_layers=LAYERS, d=D, method="full_ft", base=base, seed=3),
    }


def _no_temp_left(out: Path):
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_figures_rank_vs_rank(runs, tmp_path, capsys):
    out = tmp_path / "fig3"
    assert main(["figures", str(runs["r8"]), str(runs["r2"]), "--out", str(out)]) == 0
    data = json.loads((out / "phi_rank_layer1.json").read_text())  # middle layer by default
    assert data["run_i"]["r"] == [2] and data["run_j"]["r"] == [8]  # smaller r on i
    assert set(data["phi"]) == {"q", "v"}
    grid = torch.tensor(data["phi"]["q"])
    assert grid.shape == (2, 8) and (grid >= 0).all() and (grid <= 1).all()
    assert data["random_control"] == {}
    for ext in ("png", "pdf"):
        assert (out / f"phi_rank_layer1.{ext}").stat().st_size > 1000
    assert f"wrote {out / 'phi_rank_layer1.png'}" in capsys.readouterr().out
    _no_temp_left(out)


def test_figures_seed_vs_seed_with_layers_and_matrices(runs, tmp_path):
    out = tmp_path / "fig4"
    assert main(["figures", str(runs["r8"]), str(runs["r8b"]), "--out", str(out), "--layer", "0,2",
                 "--matrices", "v"]) == 0
    for layer in (0, 2):
        data = json.loads((out / f"phi_seed_layer{layer}.json").read_text())
        assert list(data["phi"]) == ["v"] and list(data["random_control"]) == ["v"]
        assert torch.tensor(data["random_control"]["v"]).shape == (8, 8)
        assert (out / f"phi_seed_layer{layer}.pdf").exists()


def test_phi_command(runs, tmp_path, capsys):
    out = tmp_path / "phi"
    assert main(["phi", str(runs["r2"]), str(runs["r8"]), "--layer", "2", "--matrix", "q",
                 "--i", "2", "--j", "5", "--out", str(out)]) == 0
    data = json.loads((out / "phi_layer2_q.json").read_text())
    assert data["phi"] == pytest.approx(data["grid"][1][4], abs=1e-6)
    assert f"= {data['phi']:.6f}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["phi", str(runs["r2"]), str(runs["r8"]), "--layer", "2", "--matrix", "q", "--i", "3",
              "--out", str(out)])


def test_amplification_command(runs, tmp_path):
    out = tmp_path / "amp"
    assert main(["amplification", str(runs["r8"]), "--base-weights", str(runs["base"]), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "amplification.csv").open()))
    assert len(rows) == LAYERS * 2 and rows[0]["r"] == "8"
    data = json.loads((out / "amplification.json").read_text())
    assert data["include_scaling"] is True
    row = data["rows"][0]
    assert row["amplification"] == pytest.approx(row["norm_delta"] / row["proj_delta"])
    fig8 = json.loads((out / "fig8_layer1.json").read_text())
    assert set(fig8["phi_delta_W"]["q"]) == {"r=8", "random"}
    for name in ("amplification.png", "amplification.pdf", "fig8_layer1_q.png", "fig8_layer1_v.pdf"):
        assert (out / name).exists()
    # --no-scaling divides ‖ΔW‖_F by α/r
    out2 = tmp_path / "amp2"
    main(["amplification", str(runs["r8"]), "--base-weights", str(runs["base"]), "--out", str(out2),
          "--layer", "0", "--matrices", "q", "--no-scaling"])
    row2 = json.loads((out2 / "amplification.json").read_text())["rows"]
    assert len(row2) == 1 and row2[0]["norm_delta"] * 4.0 == pytest.approx(row["norm_delta"])  # α/r = 32/8


def test_spectra_command_with_full_ft(runs, tmp_path):
    out = tmp_path / "spec"
    assert main(["spectra", str(runs["r2"]), str(runs["r8"]), str(runs["ft"]), "--base-weights",
                 str(runs["base"]), "--out", str(out), "--max-i", "6"]) == 0
    data = json.loads((out / "spectra.json").read_text())
    assert len(data["rows"]) == 3 * LAYERS * 2
    ft_rows = [r for r in data["rows"] if r["method"] == "full_ft"]
    assert ft_rows and all(r["rank99"] > 8 for r in ft_rows)
    assert all(r["rank99"] <= 2 for r in data["rows"] if r["r"] == 2)
    ov = json.loads((out / "overlap_ft_lora_layer1.json").read_text())
    assert torch.tensor(ov["phi"]["q"][str(runs["r8"])]).shape == (6, 8)
    for name in ("spectra.csv", "spectra_layer1_q.png", "overlap_ft_lora_layer1_v.pdf"):
        assert (out / name).exists()
    _no_temp_left(out)


def test_source_A_rejected_for_full_ft(runs, tmp_path):
    with pytest.raises(SystemExit):
        main(["figures", str(runs["ft"]), str(runs["r8"]), "--out", str(tmp_path)])


def test_bad_input_is_one_line_exit_2(runs, tmp_path, capsys):
    assert main(["figures", str(runs["r8"]), str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no adapter file")


def test_module_entry_point(runs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-m", "lora_research.analysis", "phi", str(runs["r8"]), str(runs["r8b"]),
                          "--layer", "0", "--matrix", "v", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "phi(layer 0, v, i=8, j=8)" in res.stdout
