"""Issue 11: the edges a careful reader finds — each test failed on the main before the fix.

Evaluation LPIPS range, adaptive GAN weight through the trainer, one data path for evaluation,
presets that fit, official statistics files, every documented config value, the learnt position
table, one sampling interface, error messages that name real keys and flags, the Python API.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repae.cli import VERBS, main
from repae.config import CHOICES, RunConfig, check_ranges, load_config
from repae.errors import ConfigError
from test_training import TINY, batch, make_trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "repae"
README = Path(__file__).resolve().parents[1] / "README.md"


# --- 1. evaluation LPIPS is the lpips package's, on [-1, 1] ---------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluate_recon_lpips_matches_lpips_package(tmp_path, vgg_file):
    import lpips

    from repae.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f4d4").eval()
    tok.save_pretrained(tmp_path / "vae")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", arr_0=images)
    out = tmp_path / "recon.json"
    assert main(["evaluate", "--recon", str(tmp_path / "vae"), "--data", str(tmp_path / "data.npz"),
                 "--lpips-vgg-weights", str(vgg_file[0]), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--batch-size", "3"]) == 0
    got = json.loads(out.read_text())["lpips"]

    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    ref.net.load_state_dict({k: vgg_file[1].state_dict()[k.split(".", 1)[1]] for k in ref.net.state_dict()})
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [6, 3, 32, 32] in [-1, 1]
    with torch.no_grad():
        rec = tok.decode(tok.encode(x).mode()).clamp(-1, 1)
        want = float(ref(x, rec, normalize=False).mean())  # the package's own range: [-1, 1]
    assert got == pytest.approx(want, rel=1e-4)


# --- 2. the adaptive GAN weight is reachable from config --------------------------------------------


def test_adaptive_disc_weight_through_trainer(tmp_path):
    tr = make_trainer(tmp_path, "lreg.adaptive_disc_weight=true", "lreg.disc_start=0")
    metrics = tr.train_step(*batch(tr))
    assert np.isfinite(float(metrics["vae_loss"]))
    fixed = make_trainer(tmp_path / "b", "lreg.adaptive_disc_weight=false", "lreg.disc_start=0")
    assert float(fixed.train_step(*batch(fixed))["vae_loss"]) != pytest.approx(float(metrics["vae_loss"]))


# --- 3. evaluation reads data like training: class folders, ADM crop, mixed sizes, bad files --------


def test_evaluate_recon_reads_class_folders_through_build_dataset(tmp_path, capsys):
    from repae.tokenizer import Tokenizer

    rng = np.random.default_rng(0)
    for cls, sizes in {"n01": [(40, 48), (64, 64)], "n02": [(33, 90), (50, 36)]}.items():
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "val" / cls / f"{i}.png")
    (tmp_path / "val" / "n02" / "broken.png").write_bytes(b"not a png")  # skipped, as in training
    torch.manual_seed(0)
    Tokenizer.from_preset("tiny-f4d4").save_pretrained(tmp_path / "vae")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--recon", str(tmp_path / "vae"), "--data", str(tmp_path / "val"), "--resolution", "32",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(out.read_text())["num_images"] == 4
    assert main(["evaluate", "--recon", str(tmp_path / "vae"), "--data", str(tmp_path / "val"), "--resolution", "32",
                 "--strict", "--device", "cpu", "--no-progress"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_reference_and_latent_stats_take_resolution(tmp_path):
    for verb in ("reference", "latent-stats", "evaluate", "cache-latents"):
        parser = argparse.ArgumentParser()
        __import__(VERBS[verb][0], fromlist=["x"]).add_arguments(parser)
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"--resolution", "--strict"} <= flags, verb


# --- 4. ImageNet presets fit 80 GB as written ------------------------------------------------------


@pytest.mark.parametrize("preset", ["imagenet-repae-sit-xl2", "imagenet-repae-sit-xl1-f16d32"])
def test_repae_presets_run_16_per_gpu_on_8_gpus(preset):
    cfg = load_config(preset)
    per_gpu = cfg.train.batch_size // (8 * cfg.train.grad_accum)
    assert per_gpu <= 16 or cfg.train.vae_checkpointing, "32/GPU measured out of memory on 80 GB"
    assert cfg.train.batch_size == 256  # the paper's global batch is unchanged


# --- 5. official latent-statistics files load safely ------------------------------------------------


def _stats_cfg(tmp_path, stats: Path) -> RunConfig:
    return load_config("tiny-fmnist", [*TINY, f"train.output_dir={tmp_path}", f"tokenizer.stats={stats}"])


@pytest.mark.parametrize("layout", ["repa-e", "va-vae"])
def test_official_stats_files_load(tmp_path, layout):
    from repae.training.builders import build_tokenizer
    from repae.training.recipes import get_recipe

    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([2.0, 0.5, 1.0, 4.0])
    path = tmp_path / ("sdvae-latents-stats.pt" if layout == "repa-e" else "latents_stats.pt")
    if layout == "repa-e":
        torch.save({"latents_scale": (1 / std).view(1, 4, 1, 1), "latents_bias": mean.view(1, 4, 1, 1)}, path)
    else:
        torch.save({"mean": mean.view(1, 4, 1, 1), "std": std.view(1, 4, 1, 1)}, path)
    tok, has_stats = build_tokenizer(_stats_cfg(tmp_path, path), get_recipe("repa-e"))
    assert has_stats
    torch.testing.assert_close(tok.normalizer.running_mean.flatten(), mean)
    torch.testing.assert_close(tok.normalizer.running_var.flatten().sqrt(), std, rtol=1e-4, atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/repae-pwned"),))


def test_stats_pt_never_executes_code(tmp_path):
    from repae.tokenizer.stats import load_stats

    path = tmp_path / "evil-latents-stats.pt"
    torch.save({"latents_scale": _Evil()}, path)
    Path("/tmp/repae-pwned").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="not a readable torch statistics file"):
        load_stats(path)
    assert not Path("/tmp/repae-pwned").exists()
    bad = tmp_path / "s.json"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match="not JSON"):
        load_stats(bad)


def test_stats_channel_mismatch_is_one_line(tmp_path):
    from repae.training.builders import build_tokenizer
    from repae.training.recipes import get_recipe

    path = tmp_path / "latents_stats.pt"
    torch.save({"mean": torch.zeros(1, 32, 1, 1), "std": torch.ones(1, 32, 1, 1)}, path)
    with pytest.raises(ConfigError, match="32 channels but the tokenizer has 4"):
        build_tokenizer(_stats_cfg(tmp_path, path), get_recipe("repa-e"))


# --- 6. every documented value of every key, from the command line and from YAML -------------------


def _documented_values() -> list[tuple[str, str]]:
    from repae.encoders.registry import ENCODERS
    from repae.models.sit import SIT_PRESETS
    from repae.sampling.solvers import SOLVERS
    from repae.tokenizer.vae import VAE_PRESETS
    from repae.training.recipes import RECIPES

    values = [(k, v) for k, vs in CHOICES.items() for v in vs]
    values += [("train.recipe", r) for r in RECIPES] + [("model.preset", p) for p in SIT_PRESETS]
    values += [("tokenizer.preset", p) for p in VAE_PRESETS] + [("sample.sampler", s) for s in SOLVERS]
    from repae.sampling.ddpm import DDPM_SAMPLERS

    values += [("sample.sampler", s) for s in (*DDPM_SAMPLERS, "auto")] + [("align.projector", p) for p in ("mlp", "conv")]
    values += [("align.target_norm", p) for p in ("none", "spatial")]
    values += [("align.encoders", f"[{e}]") for e in ENCODERS]
    cfg = RunConfig()
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            if str(f.type) in ("bool", "bool | str") or f.type is bool:
                values += [(f"{section.name}.{f.name}", w) for w in ("true", "false", "yes", "no", "on", "off")]
            if str(f.type) == "bool | str":  # a switch with "auto"
                values.append((f"{section.name}.{f.name}", "auto"))
    return values


@pytest.mark.parametrize("key,value", _documented_values())
def test_every_documented_value_is_accepted(tmp_path, key, value):
    section, name = key.split(".")
    from_cli = getattr(getattr(load_config(None, [f"{key}={value}"]), section), name)
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    from_yaml = getattr(getattr(load_config(str(path)), section), name)
    assert from_cli == from_yaml
    expect = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    if isinstance(from_cli, bool):
        assert from_cli is expect[value]
    elif isinstance(from_cli, list):
        assert from_cli == [value.strip("[]")]
    else:
        assert from_cli == value  # "no" stays "no", never the boolean False


def test_bad_choice_and_bad_type_are_one_line():
    with pytest.raises(ConfigError, match=r"train.mixed_precision='fp8' is not one of: no, bf16, fp16"):
        load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="data.source expects a string"):
        load_config(None, ["data.source=true"])


# --- 7. the learnt position table reproduces the official runs ---------------------------------------


def test_learn_pos_embed_option(tmp_path):
    fixed = make_trainer(tmp_path)
    assert "pos_embed" not in dict(fixed.sit.named_parameters())
    before = fixed.sit.pos_embed.clone()
    fixed.train_step(*batch(fixed))
    assert torch.equal(fixed.sit.pos_embed, before)  # the paper's design: never optimised

    learnt = make_trainer(tmp_path / "l", "model.learn_pos_embed=true")
    params = dict(learnt.sit.named_parameters())
    assert params["pos_embed"].requires_grad
    torch.testing.assert_close(params["pos_embed"].detach(), before)  # same sin-cos initialisation
    assert any(p is params["pos_embed"] for g in learnt.optimizers["opt_sit"].param_groups for p in g["params"])
    for _ in range(2):
        learnt.train_step(*batch(learnt))
    assert not torch.equal(learnt.sit.pos_embed.detach(), before)


def test_projector_dim_option(tmp_path):
    """model.projector_dim: 0 = the preset's width (the paper's 2048), else that width; saved with
    the run as an architecture key, so a checkpoint reloads with the head it was trained with."""
    default = make_trainer(tmp_path)
    assert default.sit.projectors[0][0].out_features == 2048
    narrow = make_trainer(tmp_path / "n", "model.projector_dim=256")
    assert [m.out_features for m in narrow.sit.projectors[0] if hasattr(m, "out_features")][:2] == [256, 256]
    with pytest.raises(ConfigError, match="model.projector_dim"):
        check_ranges(load_config(None, ["model.projector_dim=-1"]))


# --- 8. one sampling interface -----------------------------------------------------------------------


def _parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    __import__(VERBS[verb][0], fromlist=["x"]).add_arguments(parser)
    return parser


def _sampling_actions(verb: str) -> dict[str, tuple]:
    from repae.cli.common import SAMPLING_FLAGS

    out = {}
    for a in _parser(verb)._actions:
        for s in a.option_strings:
            if s in SAMPLING_FLAGS:
                out[s] = (a.dest, a.default, a.type, tuple(a.choices or ()), type(a).__name__)
    return out


def test_sampling_verbs_share_one_argument_group():
    sample, evaluate = _sampling_actions("sample"), _sampling_actions("evaluate")
    assert set(sample) == set(evaluate) and sample == evaluate
    from repae.sampling.ddpm import DDPM_SAMPLERS
    from repae.sampling.solvers import SOLVERS

    assert sample["--sampler"][3] == (*SOLVERS, *DDPM_SAMPLERS)  # only samplers that exist
    assert sample["--cfg-scale"][1] is None  # unset -> the run's own sample config
    for flag in ("--guidance-interval",):
        assert flag not in {s for a in _parser("evaluate")._actions for s in a.option_strings}


def test_unset_sampling_flags_take_the_run_config():
    from repae.cli.common import resolve_sampling
    from repae.config import SampleConfig

    args = _parser("sample").parse_args(["--checkpoint", "x", "--num-steps", "7"])
    kw = resolve_sampling(args, SampleConfig(sampler="heun", num_steps=3, cfg_scale=2.5, guidance_high=0.7))
    assert kw == {"sampler": "heun", "num_steps": 7, "cfg_scale": 2.5, "guidance_interval": (0.0, 0.7)}
    with pytest.raises(ConfigError, match="guidance interval"):
        resolve_sampling(_parser("sample").parse_args(["--checkpoint", "x", "--guidance-low", "0.9",
                                                       "--guidance-high", "0.1"]), None)


def test_preview_grid_and_generator_use_the_same_sample_config(tmp_path):
    from repae.sampling.generator import Generator

    tr = make_trainer(tmp_path, "sample.cfg_scale=2.5", "sample.sampler=heun")
    gen = Generator.from_trainer(tr)
    assert gen.sample_defaults.cfg_scale == 2.5 and gen.sample_defaults.sampler == "heun"


# --- 9. error messages name keys and flags that exist ------------------------------------------------


def _error_messages() -> list[tuple[Path, str]]:
    """The text of every ``SomethingError(...)`` built in the package (f-string parts joined)."""

    def text_of(node) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(text_of(v) for v in node.values)
        if isinstance(node, ast.BinOp):
            return text_of(node.left) + text_of(node.right)
        return "\x00"  # a formatted value: nothing to check, and it separates the pieces

    out = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name.endswith("Error"):
                    out += [(path, text_of(a)) for a in node.args]
    return out


def _all_flags() -> set[str]:
    flags = set()
    for verb in VERBS:
        flags |= {s for a in _parser(verb)._actions for s in a.option_strings}
    return flags


def test_messages_name_existing_keys_and_flags():
    cfg = RunConfig()
    sections = {f.name for f in dataclasses.fields(cfg)}
    keys = {f"{s}.{f.name}" for s in sections for f in dataclasses.fields(getattr(cfg, s))}
    flags = _all_flags() | {"--help", "--version", "--debug", "--nproc_per_node", "--nproc-per-node", "--nnodes",
                            "--node_rank", "--rdzv_endpoint", "--config-file"}
    key_rx = re.compile(r"(?<![\w./-])(" + "|".join(sorted(sections)) + r")\.([a-z_]+)\b(?!\()")
    flag_rx = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
    bad = []
    for path, text in _error_messages():
        for m in key_rx.finditer(text):
            dotted = f"{m.group(1)}.{m.group(2)}"
            if dotted not in keys and m.group(2) not in ("py", "json", "yaml", "pt", "npz", "safetensors"):
                bad.append(f"{path.name}: {dotted}")
        for flag in flag_rx.findall(text):
            if flag not in flags:
                bad.append(f"{path.name}: {flag}")
    assert not bad, "messages name keys/flags that do not exist: " + ", ".join(sorted(set(bad)))


# --- 10. the Python API of the README runs -----------------------------------------------------------


@pytest.mark.slow  # a real (2-step) run with its hooks, report and export: about 30 s
def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["images"].shape[0] == 4 and namespace["images"].dtype == torch.uint8
    assert (tmp_path / "runs" / "api-demo" / "e2e-vae" / "latent_stats.json").exists()


def test_trainer_does_not_import_sampling_or_cli():
    """The layering contract (pyproject [tool.importlinter], run by CI) in one line for the trainer."""
    src = (SRC / "training" / "trainer.py").read_text()
    assert "repae.sampling" not in src and "repae.cli" not in src


def test_no_two_modules_of_a_package_import_each_other():
    """Module-level imports (``TYPE_CHECKING`` blocks included) form no two-module cycle inside a
    package: e.g. the encoder registry and the timm loader share ``repae.encoders.spec`` instead."""
    mods = {".".join(("repae", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in SRC.rglob("*.py")}

    def module_level_deps(path: Path) -> set[str]:
        out = set()
        for node in ast.parse(path.read_text()).body:
            for imp in (ast.walk(node) if isinstance(node, ast.If) else [node]):
                if isinstance(imp, ast.ImportFrom) and imp.module and imp.module.startswith("repae"):
                    # `from repae.pkg import module` depends on that module, not on the package
                    out |= {f"{imp.module}.{a.name}" if f"{imp.module}.{a.name}" in mods else imp.module for a in imp.names}
        return out

    graph = {m: module_level_deps(p) - {m} for m, p in mods.items()}
    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                     if a in graph.get(b, ()) and a.split(".")[:2] == b.split(".")[:2]})
    assert not cycles, f"modules that import each other: {cycles}"


def test_presets_extend_and_every_preset_loads(tmp_path):
    from repae.config import available_presets

    for name in available_presets():
        load_config(name)
    cfg = load_config("tiny-fmnist-vae-init")
    base = load_config("tiny-fmnist")
    assert cfg.tokenizer.weights == "repae-vae-fmnist" and cfg.optim == base.optim and cfg.model == base.model
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="extends it back"):
        load_config(str(tmp_path / "a.yaml"))
