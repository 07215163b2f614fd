"""`repae study`: the plan, the claim-marking rule, a resumable miniature study and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from repae.cli import main
from repae.errors import ConfigError
from repae.study.claims import CLAIMS, FAILS, HOLDS, INCONCLUSIVE, MARKS, evaluate_claims, mark, pooled_sd
from repae.study.plan import (
    DEFAULT_KINDS,
    EXTRAS,
    KINDS,
    StudyConfig,
    build_plan,
    estimate_seconds,
    paper_commands,
    paper_config,
    parse_shard,
)

TINY = ["model.preset=SiT-T/1", "align.depth=2", "tokenizer.stats_images=32", "train.log_every=1",
        "sample.num_images=4", "sample.num_steps=2"]


# ---------------------------------------------------------------------------------------------
# Claim marking on synthetic per-seed results
# ---------------------------------------------------------------------------------------------


def test_clear_win_holds():
    v = mark([10.0, 10.5], [20.0, 21.0], better="lower")
    assert v.mark == HOLDS and v.gain == pytest.approx(10.25) and v.margin < v.gain


def test_clear_loss_does_not_hold():
    assert mark([20.0, 21.0], [10.0, 10.5], better="lower").mark == FAILS
    assert mark([0.1, 0.12], [0.5, 0.55], better="higher").mark == FAILS


def test_overlap_within_seed_spread_is_inconclusive():
    v = mark([10.0, 14.0], [12.0, 15.0], better="lower")
    assert v.mark == INCONCLUSIVE and "within seed noise" in v.reason
    # the same means with tight seeds are decided
    assert mark([11.9, 12.1], [13.4, 13.6], better="lower").mark == HOLDS


def test_single_seed_borrows_the_pooled_spread():
    assert mark([5.0], [10.0, 10.2], better="lower", pooled=1.0).mark == HOLDS
    assert mark([9.5], [10.0, 10.2], better="lower", pooled=1.0).mark == INCONCLUSIVE
    v = mark([5.0], [10.0], better="lower", pooled=None)
    assert v.mark == INCONCLUSIVE and "no seed spread" in v.reason


def test_missing_rows_and_nonfinite_values_are_inconclusive():
    assert mark([], [1.0, 2.0]).mark == INCONCLUSIVE
    assert mark([float("nan")], [1.0, 2.0]).mark == INCONCLUSIVE
    with pytest.raises(ValueError):
        mark([1.0], [2.0], better="bigger")


def test_pooled_spread_ignores_single_seeds_and_deterministic_rows():
    assert pooled_sd([[1.0, 3.0], [5.0], [7.0, 7.0]]) == pytest.approx(2 ** 0.5)
    assert pooled_sd([[1.0], [2.0, 2.0]]) is None


def test_evaluate_claims_uses_only_the_numbers():
    values = {"fid": {"repa-e": [10.0, 10.4], "repa": [20.0, 20.6], "no-lreg": [10.3]}}
    by_id = {v.claim.id: v for v in evaluate_claims(values)}
    assert set(by_id) == {c.id for c in CLAIMS}
    assert by_id["repae-beats-repa"].mark == HOLDS
    assert by_id["lreg-needed"].mark == INCONCLUSIVE  # 10.3 vs 10.2 with the pooled spread
    assert by_id["stopgrad-needed"].mark == INCONCLUSIVE and "no finished run" in by_id["stopgrad-needed"].reason
    assert all(v.mark in MARKS for v in by_id.values())
    json.dumps([v.to_dict() for v in by_id.values()])  # results.json-ready
    for c in CLAIMS:
        assert c.a in KINDS and c.b in KINDS and c.better in ("lower", "higher")


def test_image_variance_claims_are_new_and_leave_the_sv_claims_alone():
    from repae.study.measure import RESULT_KEYS

    by_id = {c.id: c for c in CLAIMS}
    assert len(by_id) == len(CLAIMS)  # ids are unique
    iv = by_id["e2e-collapses-image-variance"]
    assert (iv.metric, iv.better, iv.a, iv.b) == ("latent_image_variance", "lower", "e2e-diffusion", "repa")
    ivf = by_id["e2e-collapses-image-variance-fraction"]
    assert (ivf.metric, ivf.better, ivf.a, ivf.b) == ("latent_image_variance_fraction", "lower", "e2e-diffusion",
                                                      "repa")
    keep = by_id["repa-loss-keeps-image-variance"]
    assert (keep.metric, keep.better, keep.a, keep.b) == ("latent_image_variance", "higher", "repa-e", "e2e-diffusion")
    sv = by_id["naive-e2e-collapses-sv"]  # the paper's own measure, unchanged
    assert (sv.metric, sv.better, sv.a, sv.b) == ("latent_sv", "lower", "e2e-diffusion", "repa")
    planned = set(build_plan(StudyConfig()).by_kind())  # the default study marks them
    for c in (iv, ivf, keep):
        assert c.metric in RESULT_KEYS and c.a in planned and c.b in planned
    values = {"latent_image_variance": {"e2e-diffusion": [0.01], "repa": [2.5, 2.5], "repa-e": [2.0, 2.4]}}
    verdicts = {v.claim.id: v for v in evaluate_claims(values)}
    assert verdicts["e2e-collapses-image-variance"].mark == HOLDS  # pooled spread of the varying repa-e row
    assert verdicts["repa-loss-keeps-image-variance"].mark == HOLDS


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def test_default_plan_has_three_seeds_at_four_times_the_first_budget():
    """Issue 21: >= 3 seeds for the five main rows at >= 4x the first study's 240 steps; as two
    one-thread shards the estimate must fit one 3-hour session of the 2-core machine."""
    cfg = StudyConfig()
    plan = build_plan(cfg)
    kinds = plan.by_kind()
    assert set(kinds) == set(DEFAULT_KINDS) and cfg.steps >= 4 * 240
    for k in ("repa-e", "repa", "vanilla", "dropin-repa", "dropin-vanilla"):
        assert len(kinds[k]) >= 3, k
    per_shard = [sum(estimate_seconds(plan.get(n), cfg)["total"] for n in shard) for shard in plan.shards(2)]
    assert max(per_shard) < 170 * 60, per_shard
    names = plan.names()
    for r in plan.runs:  # same steps, batch and preset everywhere; drop-ins after their repa-e run
        assert f"train.max_steps={cfg.steps}" in r.overrides and f"train.batch_size={cfg.batch_size}" in r.overrides
        if r.depends_on:
            assert names.index(r.depends_on) < names.index(r.name)
            assert any(o.endswith(f"{r.depends_on}/e2e-vae") for o in r.overrides)
    shards = plan.shards(2)
    assert sorted(sum(shards, [])) == sorted(names)
    for s in shards:
        for n in s:
            dep = plan.get(n).depends_on
            assert dep is None or dep in s
    assert plan.select(shard=(2, 2)) == [plan.get(n) for n in shards[1]]


def test_bad_study_values_are_one_line():
    with pytest.raises(ConfigError, match="no run named 'nope'"):
        build_plan(StudyConfig()).select(["nope"])
    with pytest.raises(ConfigError, match="positive integer"):
        build_plan(StudyConfig(steps=0))
    with pytest.raises(ConfigError, match="exported by row repa-e: add repa-e"):
        build_plan(StudyConfig(kinds=("repa", "dropin-repa")))
    with pytest.raises(ConfigError, match="exported by row tok-se: add tok-se"):
        build_plan(StudyConfig(kinds=("vanilla", "tokreg-se")))
    with pytest.raises(ConfigError, match="DiT of the study's model size"):
        build_plan(StudyConfig(kinds=("dit",), overrides=("model.preset=SiT-S/1",)))
    for text in ("2", "0/2", "a/b"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(text)


def test_extras_add_rows_without_touching_the_default_runs():
    """--extra dit / tokreg: new rows, one seed each; every default run keeps its overrides and
    fingerprint, so a finished default study is reused, not retrained."""
    base = build_plan(StudyConfig())
    full = build_plan(StudyConfig(kinds=(*DEFAULT_KINDS, *EXTRAS["dit"], *EXTRAS["tokreg"])))
    old = {r.name: (r.overrides, r.fingerprint(base.config)) for r in base.runs}
    new = {r.name: (r.overrides, r.fingerprint(full.config)) for r in full.runs}
    assert all(new[n] == old[n] for n in old)
    assert set(new) - set(old) == {f"{k}-s0" for p in ("dit", "tokreg") for k in EXTRAS[p]}
    dit = full.get("dropin-dit-repa-s0")
    assert dit.depends_on == "repa-e-s0" and "model.preset=DiT-XS/1" in dit.overrides
    assert "sample.sampler=ddpm" in dit.overrides and "train.recipe=repa" in dit.overrides
    se, sit = full.get("tok-se-s0"), full.get("tokreg-se-s0")
    assert "train.recipe=vae" in se.overrides and "tokreg.se_weight=0.25" in se.overrides and se.exports_vae
    assert sit.depends_on == "tok-se-s0" and any(o.endswith("tok-se-s0/e2e-vae") for o in sit.overrides)
    assert not any(o.startswith("tokreg.") for o in sit.overrides)  # the SiT row only reads the tokenizer
    for shard in full.shards(2):  # a tokenizer row and the SiT trained on it share a shard
        for n in shard:
            assert full.get(n).depends_on in (None, *shard)
    for r in full.runs:  # every row's config validates (choices, ranges, sampler vs model)
        from repae.config import check_ranges, load_config
        from repae.training.builders import check_sampler_matches_model, resolve_sampler

        rc = load_config(full.config.preset, list(r.overrides))
        check_ranges(rc)
        if KINDS[r.kind].family:
            sampler = resolve_sampler(rc.model.preset, rc.sample.sampler)
            check_sampler_matches_model(rc.model.preset, sampler, "sample.sampler")
    text = "\n".join(paper_commands(paper_config(kinds=full.config.kinds)))
    assert "model.preset=DiT-L/2" in text and "sample --checkpoint study-imagenet/runs/tok-se-s0" not in text


def test_cli_extra(capsys):
    assert main(["study", "--extra", "dit", "--extra", "tokreg", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dropin-dit-s0" in out and "tokreg-vf-s0" in out
    assert main(["study", "--extra", "nope", "--dry-run"]) == 2
    assert "choose from dit, tokreg" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --extra targets: REPA gain against target quality (no training; the probe is faked)
# ---------------------------------------------------------------------------------------------


def _target_weights_env(tmp_path, monkeypatch, content: bytes = b"cnn-v1"):
    """Stand-in weights files for the packaged targets (the registry's env vars), so nothing depends on
    which assets exist; returns the CNN file."""
    vit, cnn = tmp_path / "vit.safetensors", tmp_path / "cnn.safetensors"
    vit.write_bytes(b"vit")
    cnn.write_bytes(content)
    monkeypatch.setenv("REPAE_REPAE_VIT_T4_WEIGHTS", str(vit))
    monkeypatch.setenv("REPAE_REPAE_CNN_P4_WEIGHTS", str(cnn))
    return cnn


def test_extra_targets_plan_rows_and_overrides(tmp_path):
    from repae.config import load_config
    from repae.study.plan import target_weights_path

    out = tmp_path / "study"
    base = build_plan(StudyConfig(out=str(out)))
    cfg = StudyConfig(out=str(out), kinds=(*DEFAULT_KINDS, *EXTRAS["targets"]),
                      overrides=("align.encoders=[dinov2-vit-b]",))  # --set cannot change a target row's target
    plan = build_plan(cfg)
    assert set(plan.names()) - set(base.names()) == {"target-random-s0", "target-vit-s0", "target-cnn-s0"}
    random_path = out / "targets" / "repae-vit-t4-random-seed0.safetensors"
    assert target_weights_path(cfg, KINDS["target-random"]) == random_path
    want = {"target-random-s0": ("repae-vit-t4", [str(random_path)]), "target-vit-s0": ("repae-vit-t4", []),
            "target-cnn-s0": ("repae-cnn-p4", [])}
    for name, (encoder, weights) in want.items():
        r = plan.get(name)
        assert r.recipe == "repa" and r.tables == ("targets",) and "tokenizer.weights=repae-vae-fmnist" in r.overrides
        assert r.overrides[-2:] == (f"align.encoders=[{encoder}]", f"align.encoder_weights=[{weights[0] if weights else ''}]")
        rc = load_config(cfg.preset, list(r.overrides))
        assert rc.align.encoders == [encoder] and rc.align.encoder_weights == weights
    assert all(not any(o.startswith("align.encoder_weights") for o in r.overrides)
               for r in plan.runs if not KINDS[r.kind].target)  # the default rows keep the preset's target
    unchanged = build_plan(StudyConfig(out=str(out), kinds=(*DEFAULT_KINDS, *EXTRAS["targets"])))
    assert all(r.fingerprint(unchanged.config) == base.get(r.name).fingerprint(base.config) for r in base.runs)
    with pytest.raises(ConfigError, match="--budget small only"):
        build_plan(paper_config(kinds=(*DEFAULT_KINDS, *EXTRAS["targets"])))


def test_random_target_file_is_deterministic(tmp_path, monkeypatch):
    from repae.errors import MissingWeightsError
    from repae.study.targets import prepare_targets, random_target_state, write_random_target

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    assert write_random_target(a) and write_random_target(b)
    assert torch.equal(torch.rand(3), before)  # the global RNG is untouched
    assert a.read_bytes() == b.read_bytes()  # same seed, same file: a stable run fingerprint
    assert not write_random_target(a)  # written once
    other = random_target_state(seed=1)
    assert any(not torch.equal(v, other[k]) for k, v in random_target_state().items())
    from repae.encoders import load_encoder

    enc = load_encoder("repae-vit-t4", weights=a, resolution=32)  # what align.encoder_weights loads
    assert enc(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 64, 192)

    cnn = _target_weights_env(tmp_path, monkeypatch)
    plan = build_plan(StudyConfig(out=str(tmp_path / "study"), kinds=("vanilla", *EXTRAS["targets"])))
    lines: list[str] = []
    prepare_targets(plan, log=lines.append)
    written = tmp_path / "study" / "targets" / "repae-vit-t4-random-seed0.safetensors"
    assert written.read_bytes() == a.read_bytes() and len(lines) == 1
    cnn.unlink()  # a missing target fails before any training, in one line
    with pytest.raises(MissingWeightsError, match="repae-cnn-p4"):
        prepare_targets(plan, log=lines.append)
    prepare_targets(plan, [plan.get("target-vit-s0")], log=lines.append)  # only the selected runs are checked


def _fake_probe(calls: list):
    accuracy = {"target-random": 0.70, "target-vit": 0.82, "target-cnn": 0.86, "pixels": 0.833}

    def probe(specs, *, log=print):
        calls.append(dict(specs))
        return {k: {"accuracy": accuracy[k], "train_accuracy": accuracy[k] + 0.05, "train_loss": 0.5, "num_train": 5,
                    "num_test": 3, "feature_dim": 8, "weight_decay": 1e-4} for k in specs}

    return probe


def test_target_probes_are_cached(tmp_path, monkeypatch):
    import repae.study.targets as targets

    cnn = _target_weights_env(tmp_path, monkeypatch)
    calls: list = []
    monkeypatch.setattr(targets, "probe_targets", _fake_probe(calls))
    plan = build_plan(StudyConfig(out=str(tmp_path / "study"), kinds=("vanilla", *EXTRAS["targets"])))
    assert targets.target_probes(plan, compute=False)["targets"] == {}  # nothing probed, nothing written
    assert not (tmp_path / "study" / "targets.json").exists() and not calls
    first = targets.target_probes(plan, log=lambda line: None)
    assert set(calls[0]) == {"target-random", "target-vit", "target-cnn", "pixels"}
    assert calls[0]["target-random"] == ("repae-vit-t4", str(tmp_path / "study" / "targets" /
                                                             "repae-vit-t4-random-seed0.safetensors"))
    assert calls[0]["target-cnn"] == ("repae-cnn-p4", str(cnn)) and calls[0]["pixels"] == ("pixels", None)
    saved = json.loads((tmp_path / "study" / "targets.json").read_text())["targets"]
    assert saved["target-vit"]["encoder"] == "repae-vit-t4" and saved["target-vit"]["accuracy"] == 0.82
    assert saved["target-cnn"]["weights"] == str(cnn) and saved["pixels"]["train_accuracy"] == pytest.approx(0.883)
    assert first["targets"] == saved and not first["errors"]
    again = targets.target_probes(plan, log=lambda line: None)
    assert len(calls) == 1 and again["targets"] == saved  # cached: not probed again
    cnn.write_bytes(b"cnn-v2")  # a retrained CNN: only it is probed again
    targets.target_probes(plan, log=lambda line: None)
    assert len(calls) == 2 and set(calls[1]) == {"target-cnn"}
    cnn.unlink()
    missing = targets.target_probes(plan, log=lambda line: None)
    assert "target-cnn" in missing["errors"] and "target-cnn" not in missing["targets"] and len(calls) == 2


def test_targets_report_table_and_figure_from_synthetic_results(tmp_path, monkeypatch):
    import repae.study.report as report
    import repae.study.targets as targets

    _target_weights_env(tmp_path, monkeypatch)
    calls: list = []
    monkeypatch.setattr(targets, "probe_targets", _fake_probe(calls))
    out = tmp_path / "study"
    # the preset's target made explicit for the default repa row, so the test does not follow preset edits
    cfg = StudyConfig(out=str(out), seeds=2, kinds=("vanilla", "repa", *EXTRAS["targets"]),
                      overrides=("align.encoders=[repae-vit-t4]",))
    plan = build_plan(cfg)
    fids = {"vanilla-s0": 20.0, "vanilla-s1": 21.0, "repa-s0": 18.0, "repa-s1": 18.6, "target-random-s0": 23.0,
            "target-vit-s0": 18.2, "target-cnn-s0": 16.0}
    fake = {r.name: {"fid": fids[r.name], "sfid": 5.0, "class_accuracy": 0.8, "fd_curve": [[cfg.steps, fids[r.name]]],
                     "feature_space": "evalnet-fmnist"} for r in plan.runs}
    monkeypatch.setattr(report, "gather", lambda plan: fake)
    paths = report.write_report(plan, log=lambda line: None)
    assert len(calls) == 1  # probed once, because target runs have finished
    res = json.loads(paths["json"].read_text())
    table = next(t for t in res["tables"] if t["id"] == "targets")
    rows = {r["cells"][0]: r["cells"] for r in table["rows"]}
    assert rows["none (SiT vanilla)"][4] == "20.50 ± 0.71"
    assert rows["random ViT (repae-vit-t4)"][2:7] == ["70.0 %", "1/1", "23.00", "-2.50", "5.00"]
    assert rows["MAE ViT (repae-vit-t4)"][2] == "82.0 %" and rows["SimCLR CNN (repae-cnn-p4)"][5] == "+4.50"
    assert rows["default REPA row (repae-vit-t4)"][2:5] == ["82.0 %", "2/2", "18.30 ± 0.42"]  # same target
    assert rows["raw pixels (probe reference, not a target)"][2] == "83.3 %"
    points = {p["kind"]: p for p in res["targets"]["points"]}
    assert points["repa"]["same_as"] == "target-vit" and points["target-cnn"]["probe"] == 0.86
    assert res["targets"]["probes"]["targets"]["pixels"]["accuracy"] == 0.833
    claims = {c["claim"]["id"]: c for c in res["claims"]}
    assert claims["mae-target-beats-random"]["mark"] == HOLDS  # 18.2 vs 23.0, pooled spread ~0.6
    assert claims["simclr-target-beats-random"]["mark"] == HOLDS
    png = out / "figures" / "fd-vs-probe.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "## REPA gain against target quality" in md and "figures/fd-vs-probe.png" in md
    assert "REPA gain against target quality" in paths["html"].read_text()
    report.write_report(plan, log=lambda line: None)
    assert len(calls) == 1  # targets.json is reused
    for name in fake:  # no target run finished yet: the table is there, the probe waits, no figure
        fake[name] = None
    png.unlink()
    report.write_report(plan, log=lambda line: None)
    assert len(calls) == 1 and not png.exists()


def test_paper_commands_cover_every_run():
    cfg = paper_config()
    lines = paper_commands(cfg)
    text = "\n".join(lines)
    for r in build_plan(cfg).runs:
        assert f"train.exp_name={r.name}" in text
    assert "tokenizer.weights=study-imagenet/runs/repa-e-s0/e2e-vae" in text
    assert "--inception-weights" in text and "torchrun --nproc_per_node 8 -m repae.cli train" in text


# ---------------------------------------------------------------------------------------------
# A 2-step miniature study (two recipes, tiny shapes): runs, reports, resumes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from repae.tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok") / "vae-init"
    Tokenizer.from_preset("tiny-f4d4").save_pretrained(d)
    return d


def tiny_config(out, tokenizer_dir, **changes) -> StudyConfig:
    base = dict(out=str(out), seeds=1, steps=2, batch_size=8, tokenizer=str(tokenizer_dir), overrides=tuple(TINY),
                kinds=("repa", "repa-e"), eval_every=1, curve_samples=8, eval_samples=16, sample_steps=2,
                reference="embedded:test", analysis_images=16, threads=1)
    return StudyConfig(**{**base, **changes})


def test_miniature_study_runs_reports_and_resumes(tmp_path, tokenizer_dir):
    from repae.study.run import run_study

    lines: list[str] = []
    cfg = tiny_config(tmp_path / "study", tokenizer_dir)
    first = run_study(cfg, only=["repa-s0"], log=lines.append)  # a "killed" study: one run finished
    assert first["ran"] == ["repa-s0"]
    assert any(line.startswith("study [1/1] repa-s0") and "ETA" in line for line in lines)
    second = run_study(cfg, log=lines.append)
    assert second["skipped"] == ["repa-s0"] and second["ran"] == ["repa-e-s0"]
    out = tmp_path / "study"
    for name in ("report.html", "report.md", "results.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    run = res["runs"]["repa-e-s0"]
    for key in ("fid", "sfid", "inception_score", "precision", "recall", "class_accuracy", "rfid", "psnr",
                "latent_sv", "latent_tv", "cknna"):
        assert isinstance(run[key], (int, float)), key
    assert [p[0] for p in run["fd_curve"]] == [1, 2]
    assert (out / "runs" / "repa-e-s0" / "e2e-vae" / "config.json").is_file()
    assert {c["mark"] for c in res["claims"]} <= set(MARKS)
    assert {c["claim"]["id"] for c in res["claims"]} == {"repae-beats-repa", "repae-raises-cknna", "e2e-vae-rfid"}
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Component ablation" in page
    md = (out / "report.md").read_text()
    assert "| REPA-E (VAE init.) |" in md and "figures/fd_vs_step.png" in md and (out / "figures" / "pca.png").is_file()

    third = run_study(cfg, log=lines.append)  # everything finished: nothing is trained again
    assert third["ran"] == [] and third["skipped"] == ["repa-s0", "repa-e-s0"]
    (out / "runs" / "repa-s0" / "study" / "done.json").unlink()  # killed between training and evaluation
    fourth = run_study(cfg, log=lines.append, report=False)
    assert fourth["ran"] == ["repa-s0"]
    with pytest.raises(ConfigError, match="other settings"):  # the same folder with other settings
        run_study(tiny_config(out, tokenizer_dir, steps=3), log=lines.append)


def test_miniature_extras_dit_and_tokenizer_regulariser(tmp_path, tokenizer_dir):
    """A DiT row is sampled with DDIM; a tokenizer-only row trains and exports, and the SiT row on it
    carries its rFID into the regulariser table."""
    from repae.study.run import run_study

    cfg = tiny_config(tmp_path / "study", tokenizer_dir, kinds=("vanilla", "dit", "tok-se", "tokreg-se"),
                      overrides=(*TINY, "tokreg.se_factors=[2]"))
    res = run_study(cfg, log=lambda line: None)
    assert res["ran"] == ["vanilla-s0", "dit-s0", "tok-se-s0", "tokreg-se-s0"]
    out = tmp_path / "study"
    dit_eval = json.loads(next((out / "runs" / "dit-s0" / "eval").glob("step-*.json")).read_text())
    assert dit_eval["sampler"] == "ddim"
    assert (out / "runs" / "tok-se-s0" / "e2e-vae" / "config.json").is_file()
    assert not (out / "runs" / "tok-se-s0" / "eval").exists()  # evaluated through the SiT trained on it
    results = json.loads((out / "results.json").read_text())
    assert isinstance(results["runs"]["tokreg-se-s0"]["rfid"], (int, float))
    md = (out / "report.md").read_text()
    assert "Tokenizer regularisers" in md and "| VAE init. + L_REG + SE |" in md and "DiT-T/1" in md


def test_extra_rae_plan_rows():
    """--extra rae: the decoder row drops the study's VAE weights and exports; the generator row reads that
    export with RAE's head and shift; the default runs are untouched; the paper budget is refused."""
    base = build_plan(StudyConfig())
    full = build_plan(StudyConfig(kinds=(*DEFAULT_KINDS, *EXTRAS["rae"])))
    assert set(full.names()) - set(base.names()) == {"rae-decoder-s0", "rae-s0"}
    assert all(full.get(r.name).overrides == r.overrides for r in base.runs)
    dec, gen = full.get("rae-decoder-s0"), full.get("rae-s0")
    assert dec.exports_vae and dec.depends_on is None and "train.recipe=rae-decoder" in dec.overrides
    assert "tokenizer.weights=null" in dec.overrides and "tokenizer.preset=rae" in dec.overrides
    assert gen.depends_on == "rae-decoder-s0" and "train.recipe=vanilla" in gen.overrides
    assert any(o.endswith("rae-decoder-s0/e2e-vae") for o in gen.overrides)
    assert {"model.dh_depth=2", "diffusion.time_shift=dimension"} <= set(gen.overrides)
    from repae.config import check_ranges, load_config

    for r in (dec, gen):  # the overrides validate against the current config keys
        check_ranges(load_config(full.config.preset, list(r.overrides)))
    with pytest.raises(ConfigError, match="--extra rae runs at --budget small only"):
        build_plan(paper_config(kinds=(*DEFAULT_KINDS, *EXTRAS["rae"])))


def test_miniature_extra_rae(tmp_path, tokenizer_dir):
    """The RAE decoder row trains and exports an RAE folder; the SiT row on it samples, is analysed and
    fills the 'RAE beside REPA-E' table with the decoder's rFID."""
    from repae.study.run import run_study

    cfg = tiny_config(tmp_path / "study", tokenizer_dir, kinds=("vanilla", *EXTRAS["rae"]),
                      overrides=(*TINY, "model.dh_width=64", "model.dh_heads=2", "model.check_width=false"))
    res = run_study(cfg, log=lambda line: None)
    assert res["ran"] == ["vanilla-s0", "rae-decoder-s0", "rae-s0"]
    out = tmp_path / "study"
    assert (out / "runs" / "rae-decoder-s0" / "e2e-vae" / "config.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert isinstance(results["runs"]["rae-s0"]["rfid"], (int, float))
    assert isinstance(results["runs"]["rae-s0"]["fid"], (int, float))
    md = (out / "report.md").read_text()
    assert "RAE beside REPA-E" in md and "| RAE (frozen repae-vit-t4 + ViT-T decoder) |" in md
    assert "finished runs: 3/3" in md  # the decoder run has no samples, but it is finished


def test_dropin_without_its_e2e_vae_is_one_line(tmp_path, tokenizer_dir):
    from repae.study.run import run_study

    cfg = tiny_config(tmp_path / "study", tokenizer_dir, kinds=("repa-e", "dropin-repa"))
    with pytest.raises(ConfigError, match=r"run it first \(--only repa-e-s0\)"):
        run_study(cfg, only=["dropin-repa-s0"])
    with pytest.raises(ConfigError, match="does not exist"):
        run_study(tiny_config(tmp_path / "s2", tmp_path / "missing-tokenizer"), only=["repa-s0"])
    assert not (tmp_path / "study" / "runs").exists()  # nothing was started


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_paper_dry_run_prints_commands(capsys):
    assert main(["study", "--budget", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "torchrun --nproc_per_node 8 -m repae.cli train --config imagenet-repae-sit-xl2" in out
    assert "repae study --budget paper --report-only" in out


def test_cli_small_dry_run_prints_plan_and_estimate(capsys):
    assert main(["study", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 runs" in out and "estimated time" in out and "repa-e-s2" in out


def test_cli_bad_only_is_one_line(capsys):
    assert main(["study", "--only", "repa-e-s9", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run named 'repa-e-s9'" in err and "repa-e-s0" in err


def test_a_moved_study_keeps_its_fingerprints(tmp_path):
    """Files inside the study folder (drop-in E2E-VAEs, the random target) are named relative to it: a
    study copied elsewhere reuses its finished runs; a different tokenizer still changes them."""
    kinds = (*DEFAULT_KINDS, *EXTRAS["targets"])
    here, there = StudyConfig(out="study", kinds=kinds), StudyConfig(out=str(tmp_path / "moved"), kinds=kinds)
    a, b = build_plan(here), build_plan(there)
    assert any("study/runs/repa-e-s0/e2e-vae" in o for o in a.get("dropin-repa-s0").overrides)
    assert {r.name: r.fingerprint(here) for r in a.runs} == {r.name: r.fingerprint(there) for r in b.runs}
    other = StudyConfig(out="study", kinds=kinds, tokenizer=str(tmp_path / "another-vae"))
    assert build_plan(other).get("vanilla-s0").fingerprint(other) != a.get("vanilla-s0").fingerprint(here)
