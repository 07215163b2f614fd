"""``repae bench --profile`` and ``--sweep`` on the tiny default (one thread, one step, no timing asserts)."""

from __future__ import annotations

import json

import pytest

import repae.cli.bench as cli_bench
from repae.cli import main

TINY = ["bench", "--config", "tiny-fmnist", "--threads", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]


def test_profile_reports_top_ops_host_syncs_and_no_graph_breaks(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main([*TINY, "--profile", "--profile-top", "8", "--json", str(out), "train.batch_size=4"]) == 0
    result = json.loads(out.read_text())
    ops = result["profile_top_ops"]
    assert 0 < len(ops) <= 8
    assert all(0 < op["pct"] <= 100 and op["self_ms"] > 0 and op["calls"] >= 1 for op in ops)
    assert sum(op["pct"] for op in ops) <= 100.5
    assert [op["self_ms"] for op in ops] == sorted((op["self_ms"] for op in ops), reverse=True)
    assert isinstance(result["host_syncs_per_step"], int) and result["host_syncs_per_step"] >= 0
    assert isinstance(result["host_syncs"], dict)
    assert result["graph_breaks"] is None  # compile off
    printed = capsys.readouterr().out
    first, *table = printed.splitlines()
    assert "sec_per_step=" in first and "host_syncs_per_step=" in first and "profile_top_ops" not in first
    assert any(line.startswith("op ") and "self ms" in line and "% step" in line for line in table)
    assert ops[0]["op"][:70] in printed
    assert "host syncs per step:" in printed and "graph breaks: n/a (compile off)" in printed


def test_sweep_batch_size_prints_a_markdown_row_per_value(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert main([*TINY, "--sweep", "train.batch_size=2,4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["sweep_value"] for r in rows] == ["2", "4"]
    assert [r["batch"] for r in rows] == [2, 4]
    assert all(r["sec_per_step"] > 0 and r["sweep_key"] == "train.batch_size" for r in rows)
    lines = capsys.readouterr().out.splitlines()
    assert "| train.batch_size | s/step | img/s | peak RSS GB |" in lines
    assert "|---|---|---|---|" in lines
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| 2 |") or line.startswith("| 4 |")] \
        == ["2", "4"]
    assert any(line.startswith("peak RSS:") for line in lines)


def test_sweep_records_out_of_memory_and_goes_on(tmp_path, capsys, monkeypatch):
    """An OOM at one value is an ``OOM`` row; the values after it still run (fake bench: no trainer)."""

    def fake_bench(cfg, **kwargs):
        if cfg.train.batch_size == 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"device": "cpu", "threads": 1, "batch": cfg.train.batch_size, "sec_per_step": 0.5,
                "img_per_s": cfg.train.batch_size / 0.5, "peak_rss_gb": 1.0, "tflop_per_step": 0.001,
                "achieved_tflops": 0.002}

    monkeypatch.setattr(cli_bench, "bench", fake_bench)
    out = tmp_path / "sweep.json"
    assert main([*TINY, "--flops", "--sweep", "train.batch_size=2,4,8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r.get("oom", False) for r in rows] == [False, True, False]
    assert "out of memory" in rows[1]["error"]
    lines = capsys.readouterr().out.splitlines()
    assert "| train.batch_size | s/step | img/s | peak RSS GB | TFLOP/step | achieved TFLOP/s | MFU |" in lines
    assert "| 4 | OOM |  |  |  |  |  |" in lines
    assert "| 8 | 0.5000 | 16.00 | 1.00 | 0.001 | 0.00 | – |" in lines


def test_sweep_other_errors_are_not_hidden(monkeypatch):
    def broken(cfg, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(cli_bench, "bench", broken)
    assert main([*TINY, "--sweep", "train.batch_size=2,4"]) == 1


@pytest.mark.parametrize("argv", [
    ["--sweep", "batch"],                                   # no '='
    ["--sweep", "train.batch_size="],                       # no values
    ["--sweep", "train.batch_size=2,,4"],                   # an empty value
    ["--sweep", "batch_size=2,4"],                          # not section.key
    ["--sweep", "train.no_such_key=2,4"],                   # unknown key: fails before any bench
    ["--sweep", "train.batch_size=2", "--sweep", "data.resolution=32"],  # the flag twice
    ["--profile-top", "0"],
])
def test_bad_input_is_one_line_and_exit_2(argv, capsys, monkeypatch):
    monkeypatch.setattr(cli_bench, "bench", lambda *a, **k: pytest.fail("bench ran on bad input"))
    assert main([*TINY, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("repae bench: error:") and len(err.splitlines()) == 1


def test_sweep_values_keep_brackets_whole():
    assert cli_bench.parse_sweep("align.encoders=[a,b],[c]") == ("align.encoders", ["[a,b]", "[c]"])
    assert cli_bench.parse_sweep("train.batch_size= 8, 16 ") == ("train.batch_size", ["8", "16"])


def test_graph_breaks_are_read_from_dynamo_counters():
    import torch._dynamo

    from repae.training.bench import graph_break_report, reset_graph_breaks

    torch._dynamo.reset()
    reset_graph_breaks()

    @torch.compile(backend="eager")  # no inductor: tracing only
    def f(x):
        y = x + 1
        torch._dynamo.graph_break()
        return y * 2

    try:
        f(torch.ones(3))
        total, reasons = graph_break_report()
    finally:
        torch._dynamo.reset()
    assert total >= 1 and reasons and all(isinstance(r, str) and len(r) <= 200 for r in reasons)


def test_sample_mode_times_solver_and_decode_and_counts_network_calls(tmp_path, capsys):
    """--sample N: one batch of N images with the config's sample.* settings; NFE counts the CFG doubling
    (euler, 4 steps on t = 1, .75, .5, .25; CFG on t <= 0.5: 2 single + 2 double = 6 per sample)."""
    out = tmp_path / "sample.json"
    assert main([*TINY, "--sample", "3", "--json", str(out), "sample.sampler=euler", "sample.num_steps=4",
                 "sample.cfg_scale=2.0", "sample.guidance_high=0.5"]) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "sample" and result["batch"] == 3 and result["nfe"] == 6
    assert result["solver_s"] > 0 and result["decode_s"] > 0
    assert result["sec_per_batch"] == pytest.approx(result["solver_s"] + result["decode_s"], abs=3e-4)  # each rounded to 1e-4
    assert result["precision"] == "fp32" and "sec_per_batch=" in capsys.readouterr().out
    assert main([*TINY, "--sample", "2", "--sample-precision", "bf16", "--json", str(out), "sample.num_steps=2",
                 "sample.cfg_scale=1.0", "train.channels_last=true"]) == 0
    result = json.loads(out.read_text())
    assert (result["nfe"], result["precision"], result["channels_last"]) == (2, "bf16", True)


def test_sample_mode_sweep_and_bad_flags(capsys):
    assert main([*TINY, "--sample", "2", "--sweep", "sample.num_steps=1,2", "sample.cfg_scale=1.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| sample.num_steps | s/batch | solver s | decode s | img/s | peak RSS GB |" in lines
    for flags, match in ((["--sample", "-1"], "--sample -1"), (["--sample", "2", "--profile"], "--profile"),
                         (["--sample", "2", "--flops"], "--flops"), (["--sample", "2", "train.recipe=vae"],
                                                                     "trains no generator")):
        assert main([*TINY, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("repae bench: error:") and match in err and len(err.splitlines()) == 1
