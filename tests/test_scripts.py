"""The shipped scripts run (slow: CI runs them once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_dry_run_on_cpu(tmp_path):
    """scripts/gpu_bench.sh --device cpu --tiny runs every case and writes its JSON figures."""
    env = dict(os.environ, OUT=str(tmp_path), REPAE=str(Path(sys.executable).parent / "repae"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--device", "cpu", "--tiny"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "done: 0 case(s) failed" in proc.stdout
    figures = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert {"repae-xl2-b32-eager", "repae-xl2-b32-ckpt", "repa-xl2-b64", "repae-xl2-sweep-b8"} <= set(figures)
    assert {"sample-xl2-sde50-fp32", "sample-xl2-sde50-bf16", "sample-xl2-sde50-bf16-nhwc"} <= set(figures)
    assert all(f["sec_per_step"] > 0 for name, f in figures.items() if not name.startswith("sample-"))
    assert [figures[f"sample-xl2-sde50-{p}"]["precision"] for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert all(f["sec_per_batch"] > 0 and f["batch"] == 4 for n, f in figures.items() if n.startswith("sample-"))
