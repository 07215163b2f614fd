"""The README is executed (issue 25 item 5): every command README.md and docs/*.md show is parsed, and
(slow) run at tiny size.

**Extraction** (:func:`extract`). A command is text that starts with ``repae VERB``, ``.venv/bin/repae``,
``python -m repae.cli``, ``torchrun ... -m repae.cli``, ``accelerate launch ... -m repae.cli`` or
``[.venv/bin/]python scripts/X.py``, found

* in fenced code blocks (and 4-space indented code lines): one command per logical line, ``\\``
  continuations joined, ``$`` prompts and ``# comments`` dropped, split at ``&&`` / ``&`` / ``;``, and
  ``NAME="..."`` shell variables of the same block expanded (docs/benchmarks.md's ``$REF``, ``$S``);
* in inline code spans anywhere in the prose (tables and lists included), also over a line break; a
  table's ``\\|`` is a ``|``.

**Parse check** (default, every command; :func:`test_every_command_parses`). The verb exists, the
verb's own argparse parser accepts the arguments, and every ``section.key=value`` override (and
``--sweep`` value, ``--set``) names a real key with an accepted value (``load_config``,
``check_ranges``, then ``validate_config`` of the resolved run; an error that names a file the
command reads, which does not exist here, is accepted). A command with placeholders (``RUN``,
``DIR``, ``<...>``, ``...``, ``[--flag X]``, ``a|b``, an undefined ``$VAR``) and a *mention* (an
inline ``repae VERB`` or ``repae VERB --flag`` in a sentence) are checked leniently: the verb exists,
every ``--flag`` is one of the verb's, every listed choice (``--format official|diffusers``) is
accepted, every literal override is valid. Scripts: the file exists and it knows every flag shown.
Overrides shown alone in prose (``lreg.perceptual=lpips``) name real keys with accepted values
(:func:`test_every_documented_override_is_valid`). A docs command the CLI rejects is a docs bug: fix
the docs, not this test.

**Execution** (``-m slow``; :func:`test_every_command_runs`). In process (``repae.cli.main``), in a
fresh working folder, with the tiny-size changes of :data:`TINY` (flag values replaced or added;
``train`` gets :data:`TRAIN_TINY` appended). A command that reads what an earlier doc command makes
(``runs/repae-fmnist``, ``runs/rae-fmnist/e2e-vae``, ``latents/rae-fmnist``) gets the tiny version of
that command's output, made once per module by :class:`Workshop` (:data:`ARTIFACTS`); a run folder
the docs make at ImageNet scale or in the study is stood in for by the tiny ``runs/repae-fmnist``
(:data:`STAND_INS`). Identical tiny commands run once; every one must exit 0 (no docs command is shown
failing). Skipped, with the reason: placeholders, and what :data:`SKIPS` lists (files a user
supplies, a GPU, minutes of work). Mentions are not run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from repae.cli import VERBS
from repae.cli import main as repae_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

# ---------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------

_ENV = r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"  # OMP_NUM_THREADS=1 repae ...
_LAUNCH = r"(?:torchrun|accelerate\s+launch)\b[^`]*?\s-m\s+repae\.cli"
_START = re.compile(rf"^{_ENV}(?:(?:\.venv/bin/)?repae|(?:\S*/)?python3?\s+-m\s+repae\.cli|{_LAUNCH}|"
                    rf"(?:\S*/)?python3?\s+scripts/[\w-]+\.py)(?:\s|$)")
_FENCE = re.compile(r"^\s*(```+|~~~+)")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class DocCommand:
    file: str  # README.md, docs/x.md
    line: int
    text: str  # as shown (continuations joined, comment dropped)
    inline: bool  # an inline code span (else a code block)
    launcher: tuple[str, ...]  # the launcher's words before the verb: ("torchrun", "--nproc_per_node", "8"); or ()
    script: str | None  # "scripts/x.py" for a script command
    argv: tuple[str, ...]  # repae: (verb, *args); script: its args

    @property
    def verb(self) -> str | None:
        return None if self.script or not self.argv else self.argv[0]

    @property
    def id(self) -> str:
        short = self.text if len(self.text) <= 64 else self.text[:61] + "..."
        return f"{self.file}:{self.line}:{short}"


def _split_shell(text: str) -> list[str]:
    """One logical line -> its commands (split at && & ; |), comments dropped, quotes kept for shlex."""
    lex = shlex.shlex(text, posix=False, punctuation_chars=";&|")
    lex.whitespace_split = True
    parts, current = [], []
    for tok in lex:
        if tok and set(tok) <= set(";&|"):
            parts.append(" ".join(current))
            current = []
        else:
            current.append(tok)
    return [p for p in [*parts, " ".join(current)] if p.strip()]


def _command(file: str, line: int, text: str, inline: bool) -> DocCommand | None:
    """The DocCommand of one command's text (comments already dropped), or None when it is no command."""
    text = " ".join(text.split())
    if text.startswith("$ "):
        text = text[2:]
    if not _START.match(text):
        return None
    try:
        tokens = shlex.split(text)
    except ValueError:  # an unbalanced quote in prose
        tokens = text.split()
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    launcher, script = (), None
    if tokens[0] in ("torchrun", "accelerate"):
        launcher = tuple(tokens[:tokens.index("repae.cli") + 1])
        tokens = tokens[tokens.index("repae.cli") + 1:]
    elif tokens[0].endswith("repae"):
        tokens = tokens[1:]
    elif "-m" in tokens[:3] and "repae.cli" in tokens[:3]:
        tokens = tokens[tokens.index("repae.cli") + 1:]
    else:  # python scripts/x.py
        script, tokens = tokens[1], tokens[2:]
    if not script and not tokens:
        return None  # the bare name "repae": the project, not a command
    return DocCommand(file, line, text, inline, launcher, script, tuple(tokens))


def extract(path: Path) -> list[DocCommand]:
    """Every command shown in one markdown file, in order (see the module docstring)."""
    file = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[DocCommand] = []
    prose: list[tuple[int, str]] = []  # (line number, text) outside fences; "" breaks a paragraph
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        indented = lines[i].startswith("    ") and (not prose or not prose[-1][1].strip())
        if not fence and not indented:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        if indented:  # an indented code line (a blank line before it)
            block, i = [(i + 1, lines[i])], i + 1
            prose.append((i, ""))
        else:
            block, i = [], i + 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                block.append((i + 1, lines[i]))
                i += 1
            i += 1
            prose.append((i, ""))
        variables: dict[str, str] = {}
        j = 0
        while j < len(block):
            start, logical = block[j]
            while logical.rstrip().endswith("\\") and j + 1 < len(block):
                j += 1
                logical = logical.rstrip()[:-1] + " " + block[j][1].strip()
            j += 1
            logical = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                             lambda m: variables.get(m.group(1), m.group(0)), logical)
            try:
                parts = _split_shell(logical)
            except ValueError:  # not shell (a quote left open: prose, Python, output)
                continue
            for part in parts:
                if (assign := _ASSIGN.match(part.strip())) and len(shlex.split(part)) == 1:  # NAME="..."
                    variables[assign.group(1)] = shlex.split(assign.group(2))[0]
                    continue
                if (cmd := _command(file, start, part, inline=False)) is not None:
                    found.append(cmd)
    paragraph: list[tuple[int, str]] = []
    for lineno, text in [*prose, (len(lines) + 1, "")]:
        if text.strip():
            paragraph.append((lineno, text))
            continue
        if paragraph:
            joined = "\n".join(t for _, t in paragraph)
            first = paragraph[0][0]
            for m in re.finditer(r"(`+)(.+?)\1", joined, flags=re.S):
                span = m.group(2).replace("\\|", "|").strip()
                if (cmd := _command(file, first + joined.count("\n", 0, m.start()), span, inline=True)) is not None:
                    found.append(cmd)
        paragraph = []
    return sorted(found, key=lambda c: c.line)


COMMANDS: list[DocCommand] = [c for doc in DOCS for c in extract(doc)]


def _ids(commands: list[DocCommand]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in commands:
        seen[c.id] = seen.get(c.id, 0) + 1
        out.append(c.id if seen[c.id] == 1 else f"{c.id}#{seen[c.id]}")
    return out


# ---------------------------------------------------------------------------------------------------------
# What each command needs: placeholders, mentions, skips, tiny size
# ---------------------------------------------------------------------------------------------------------

_PLACEHOLDER_WORD = re.compile(r"^[A-Z][A-Z0-9_]*$")  # RUN, DIR, OUT, N, S, PRESET, VAE_PRESET, ...


def placeholder(cmd: DocCommand) -> str | None:
    """The first placeholder token of a command (a value the reader fills in), or None."""
    for tok in (*cmd.launcher, *cmd.argv):
        if re.search(r"<|>|\.\.\.|\$|\|", tok) or tok.startswith("[") or (tok.endswith("]") and "=" not in tok):
            return tok
        if any(_PLACEHOLDER_WORD.match(part) for part in re.split(r"[/=,.:]", tok)):
            return tok
    return None


# Verbs whose bare inline ``repae VERB`` the docs quote as a command (with its measured time), not as a name.
BARE_RUNS = ("train", "bench")


def is_mention(cmd: DocCommand) -> bool:
    """An inline span that names a verb (``repae sample``) or its flags (``repae evaluate --reference``,
    ``repae sample --precision bf16``) in a sentence: no command to run. A bare ``repae VERB`` is one unless
    VERB is in BARE_RUNS; a span with flags is one when the verb's parser misses only a required argument
    or a flag's value (``repae bench --profile`` parses, so it runs; a misspelt flag fails the parse test)."""
    if not cmd.inline or cmd.script or cmd.verb not in VERBS:
        return False
    if len(cmd.argv) == 1:
        return cmd.verb not in BARE_RUNS
    args, message = parse(cmd)
    return args is None and ("arguments are required" in message or "expected one argument" in message)


# Commands that are not run, in order of precedence: (pattern searched in the command as shown, reason).
SKIPS: tuple[tuple[str, str], ...] = (
    (r"--device cuda", "needs a CUDA GPU (--device cuda)"),
    (r"--config imagenet-", "ImageNet preset: needs the ImageNet train folder and the published VAE, DINOv2 and "
                            "VGG16 weights (files a user supplies; listed in the preset)"),
    (r"/data/imagenet|imagenet/val", "needs an ImageNet folder (a user supplies it)"),
    (r"(?:^|\s)--checkpoint \S+\.pt\b|--checkpoint \S+\.safetensors",
     "samples a published checkpoint file (REPA-E / SiT / DiT / LightningDiT release; a user downloads it)"),
    (r"pretrained/|sd-vae-ft-m|dinov2_vit|\.ckpt\b", "needs published weights (a user downloads them)"),
    (r"--inception-weights|VIRTUAL_imagenet",
     "needs the ADM Inception weights and reference batch (a user supplies them)"),
    (r"flux-like-vae", "flux-like-vae is the tiny random FLUX.1-like folder tests/test_diffusers_vaes.py builds and "
                       "trains a step on (not shipped)"),
    (r"train\.compile=true", "torch.compile of the 256 px reference step: ~2 min to compile on a CPU"),
    (r"data\.resolution=256", "the 256 px reference configuration (SiT-B/2 + f8d4 + DINOv2-B + VGG16; DINOv2-B takes "
                              "256 or 512 px only, so it cannot shrink): 30-130 s a step or a batch on a CPU"),
    (r"scripts/precision_compare\.py",
     "trains the main job at batch 64 under fp32, bf16 and fp16 (the script has no batch flag); fp16 runs ~20x "
     "slower on a CPU without native fp16 (~1 min a step, docs/benchmarks.md)"),
)

TRAIN_TINY = ("train.max_steps=1", "train.batch_size=2", "train.threads=1", "train.checkpoint_every=1",
              "train.log_every=1", "train.sample_every=0", "train.diagnostics_every=0", "train.final_eval_samples=0",
              "train.html_report=false", "train.report_to=none", "tokenizer.stats_images=8", "sample.num_images=2",
              "sample.num_steps=2")
TINY_DATA = "tiny-fmnist.npz"  # 64 train / 32 test images of the embedded set (made by the Workshop)


@dataclass(frozen=True)
class Tiny:
    """How a verb's command is made tiny: flags whose value is set (replaced, or added when absent), flags
    given a value only when the command has none, flags added, and (verbs with dotted overrides) overrides
    appended after the command's own (the last value of a key wins)."""

    set: tuple[tuple[str, str], ...] = ()
    default: tuple[tuple[str, str], ...] = ()
    add: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()


TINY: dict[str, Tiny] = {
    "train": Tiny(overrides=TRAIN_TINY),
    "bench": Tiny(set=(("--steps", "1"), ("--warmup", "0"), ("--threads", "1")),
                  overrides=("train.batch_size=2", "tokenizer.stats_images=8", "sample.num_steps=2")),
    "sample": Tiny(set=(("--num-samples", "2"), ("--num-steps", "2"), ("--batch-size", "2"))),
    "evaluate": Tiny(set=(("--num-samples", "16"), ("--batch-size", "16")), add=("--no-progress",)),
    "analyze": Tiny(set=(("--num-images", "16"), ("--batch-size", "16"), ("--grid", "4"))),
    "report": Tiny(set=(("--quick-images", "16"),)),
    # the tiny data set is an .npz, read at 256 px unless told: --resolution 32 as for the embedded set
    "cache-latents": Tiny(set=(("--data", TINY_DATA), ("--batch-size", "16")), default=(("--resolution", "32"),),
                          add=("--no-progress",)),
    "latent-stats": Tiny(set=(("--data", TINY_DATA), ("--max-images", "16")), default=(("--resolution", "32"),)),
    "linear-probe": Tiny(set=(("--train-data", TINY_DATA), ("--test-data", TINY_DATA), ("--threads", "1"))),
    "pretrain-encoder": Tiny(set=(("--epochs", "1"), ("--data", TINY_DATA), ("--batch-size", "16"), ("--threads", "1")),
                             add=("--no-probe",)),
    "study": Tiny(set=(("--threads", "1"),)),  # + --dry-run, below: a study trains for hours
    "export": Tiny(), "export-vae": Tiny(), "config": Tiny(), "reference": Tiny(),
    # scripts: the flags they pass on to repae (make_encoder_asset.py: "extra flags override"; without --out
    # it writes the shipped asset); make_vae_asset.py: see _run_script
    "scripts/make_encoder_asset.py": Tiny(set=(("--epochs", "1"), ("--data", TINY_DATA), ("--batch-size", "16")),
                                          default=(("--out", "encoder.safetensors"),), add=("--no-probe",)),
    "scripts/make_vae_asset.py": Tiny(),
}

# A documented path -> the doc command that makes it (run once, at tiny size, by the Workshop), and the
# paths that command itself needs first.
ARTIFACTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "runs/repae-fmnist": ("repae train", ()),
    "runs/rae-fmnist": ("repae train --config tiny-fmnist-rae", ()),
    "runs/rae-fmnist-sit-dh": ("repae train --config tiny-fmnist-rae-sit-dh", ("runs/rae-fmnist",)),
    "latents/rae-fmnist": ("repae cache-latents --vae runs/rae-fmnist/e2e-vae --out latents/rae-fmnist",
                           ("runs/rae-fmnist",)),
    "runs/cnn-e12.safetensors": ("python scripts/make_encoder_asset.py --epochs 12 --out runs/cnn-e12.safetensors",
                                 ()),
}
# run folders the docs make at ImageNet scale or in the study: the tiny runs/repae-fmnist stands in
STAND_INS = ("runs/e2e-diffusion", "runs/repae-sit-xl2-sdvae", "runs/repae-sit-xl2-flux1", "runs/repae-xl2",
             "study/runs/repa-e-s0", "study/runs/e2e-diffusion-s0", "study/runs/repa-e-scratch-s0")
# presets whose YAML reads an artifact
PRESET_NEEDS = {"tiny-fmnist-rae-sit-dh": ("runs/rae-fmnist",)}


def skip_reason(cmd: DocCommand) -> str | None:
    if (ph := placeholder(cmd)) is not None:
        return f"placeholder {ph!r}: a value the reader fills in (arguments checked by the parse test)"
    for pattern, reason in SKIPS:
        if re.search(pattern, cmd.text):
            return reason
    return None


def needs(cmd: DocCommand) -> list[str]:
    """Documented paths the command reads that an earlier doc command makes (ARTIFACTS keys, STAND_INS)."""
    out = []
    for tok in cmd.argv:
        value = tok.split("=", 1)[-1]
        for path in (*ARTIFACTS, *STAND_INS):
            if (value == path or value.startswith(path + "/")) and path not in out:
                out.append(path)
    if "--config" in cmd.argv:
        for path in PRESET_NEEDS.get(cmd.argv[cmd.argv.index("--config") + 1], ()):
            out.append(path)
    return out


def tiny_argv(cmd: DocCommand) -> list[str]:
    """The command's arguments at tiny size (TINY), for repae.cli.main or the script."""
    key = cmd.script or cmd.verb
    rule = TINY[key]
    argv = list(cmd.argv)
    for flag, value in rule.set:
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    for flag, value in rule.default:
        if flag not in argv:
            argv += [flag, value]
    argv += [a for a in rule.add if a not in argv]
    if cmd.verb == "study" and "--report-only" not in argv and "--budget" not in argv:
        argv.append("--dry-run")
    if cmd.verb == "train" and any(a.startswith("data.latents=") for a in argv):
        argv.append(f"data.source={TINY_DATA}")  # the tiny cache holds the tiny data set
    return argv + list(rule.overrides)


# ---------------------------------------------------------------------------------------------------------
# Parse check (default)
# ---------------------------------------------------------------------------------------------------------

_PARSERS: dict[str, argparse.ArgumentParser] = {}


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """The parser ``repae VERB`` uses (repae.cli.main builds it the same way)."""
    if verb not in _PARSERS:
        module_name, help_ = VERBS[verb]
        parser = argparse.ArgumentParser(prog=f"repae {verb}", description=help_)
        importlib.import_module(module_name).add_arguments(parser)
        _PARSERS[verb] = parser
    return _PARSERS[verb]


def parse(cmd: DocCommand) -> tuple[argparse.Namespace | None, str]:
    """(the parsed arguments, "") or (None, argparse's message); ``--help`` gives (None, "help")."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return verb_parser(cmd.verb).parse_args(list(cmd.argv[1:])), ""
    except SystemExit as exit_:
        return None, "help" if exit_.code == 0 else err.getvalue().strip().splitlines()[-1]


_OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_0-9]+=")


def _check_override(text: str) -> None:
    from repae.config import load_config

    load_config(None, [text])


def _lenient_check(cmd: DocCommand) -> None:
    """Placeholders and mentions: the verb's flags exist, listed choices are accepted, literal overrides valid."""
    parser = verb_parser(cmd.verb)
    tokens = [t.strip("[]") for t in cmd.argv[1:]]
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            assert flag in parser._option_string_actions, f"repae {cmd.verb} has no flag {flag} (docs: {cmd.text!r})"
            action = parser._option_string_actions[flag]
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            if action.choices and nxt and not nxt.startswith("--"):
                for choice in nxt.split("|"):
                    if not _PLACEHOLDER_WORD.match(choice):
                        assert choice in action.choices, f"{flag} {choice}: not one of {action.choices} ({cmd.text!r})"
        elif _OVERRIDE.match(tok) and not re.search(r"[A-Z]{2,}|\.\.\.|<|\$", tok.split("=", 1)[1]):
            if i and tokens[i - 1] == "--sweep":
                from repae.cli.bench import parse_sweep

                key, values = parse_sweep(tok)
                for value in values:
                    _check_override(f"{key}={value}")
            else:
                _check_override(tok)


_PATH_KEYS = ("data.source", "data.latents", "tokenizer.weights", "tokenizer.stats", "align.encoder_weights",
              "lreg.vgg_weights", "train.init_from")


def _paths_in(cmd: DocCommand) -> list[str]:
    """Path values of a command missing here: a path key's override value, or a non-override word with a '/'
    or a file suffix."""
    out = []
    for tok in cmd.argv[1:]:
        key, _, value = tok.rpartition("=") if _OVERRIDE.match(tok) else ("", "", tok)
        value = value.strip("[]")
        path_like = key in _PATH_KEYS or not key and ("/" in value or re.search(r"\.\w+$", value))
        if path_like and not Path(value).exists():
            out.append(value)
    return out


def _validate_run_config(preset: str, overrides: list[str], cmd: DocCommand) -> None:
    from repae.config import check_ranges, load_config
    from repae.errors import ConfigError, MissingWeightsError
    from repae.training.builders import validate_config

    cfg = load_config(preset, overrides)
    check_ranges(cfg)
    try:
        validate_config(cfg)
    except (ConfigError, MissingWeightsError) as err:  # a file the user supplies / an earlier command makes
        if not any(p in str(err) for p in [*_paths_in(cmd), *PRESET_NEEDS.get(preset, ())]):
            raise


def _strict_check(cmd: DocCommand) -> None:
    args, message = parse(cmd)
    if args is None:
        assert message == "help" and "--help" in cmd.argv, f"docs show {cmd.text!r}: {message}"
        return
    if cmd.verb in ("train", "bench", "config"):
        overrides = list(args.overrides) + ([f"train.recipe={args.recipe}"] if getattr(args, "recipe", None) else [])
        _validate_run_config(args.config, overrides, cmd)
        for sweep in getattr(args, "sweep", None) or []:
            from repae.cli.bench import parse_sweep

            key, values = parse_sweep(sweep)
            for value in values:
                _validate_run_config(args.config, [*overrides, f"{key}={value}"], cmd)
    if cmd.verb == "study":
        from repae.cli import study as study_cli
        from repae.study.plan import build_plan

        for text in args.overrides:
            _check_override(text)
        build_plan(study_cli._config(args))  # --extra / --seeds / --budget resolve to a plan (one line otherwise)


# scripts that pass their flags on to a repae verb (after their own arguments)
SCRIPT_VERBS = {"scripts/make_encoder_asset.py": "pretrain-encoder"}


def _check_script(cmd: DocCommand) -> None:
    """The script exists; a script that passes its flags on to a verb: that verb's parser accepts them; any
    other script: its source names every flag shown."""
    path = ROOT / cmd.script
    assert path.is_file(), f"{cmd.script} does not exist (docs: {cmd.text!r})"
    if cmd.script in SCRIPT_VERBS:
        args, message = parse(DocCommand(cmd.file, cmd.line, cmd.text, cmd.inline, (), None,
                                         (SCRIPT_VERBS[cmd.script], *cmd.argv)))
        assert args is not None, f"docs show {cmd.text!r}: {message}"
        return
    source = path.read_text(encoding="utf-8")
    for tok in cmd.argv:
        if tok.startswith("--"):
            assert f'"{tok}"' in source, f"{cmd.script} has no flag {tok}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=_ids(COMMANDS))
def test_every_command_parses(cmd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths of the docs resolve as on a fresh checkout's empty folder
    if cmd.script:
        return _check_script(cmd)
    assert cmd.verb in VERBS, f"the docs show an unknown verb {cmd.verb!r}: {cmd.text!r}"
    if placeholder(cmd) is not None or is_mention(cmd):
        return _lenient_check(cmd)
    _strict_check(cmd)


_FENCED = re.compile(r"^\s*(```+|~~~+).*?^\s*\1", re.S | re.M)


def override_spans() -> list[tuple[str, int, list[str]]]:
    """Inline spans made only of ``section.key=value`` overrides (``lreg.perceptual=lpips``), outside commands."""
    found = []
    for doc in DOCS:
        text = _FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text(encoding="utf-8"))
        for m in re.finditer(r"`([^`]+)`", text):
            words = m.group(1).replace("\\|", "|").split()
            if words and all(_OVERRIDE.match(w) for w in words):
                found.append((str(doc.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, words))
    return found


def test_every_documented_override_is_valid():
    """Overrides shown in prose name a real key (not a renamed one) with an accepted value; ``a|b`` and
    ``0,1,2`` (one run per value) are checked value by value; a placeholder value (``N``, ``...``) is not."""
    from repae.config import key_facts

    spans, bad = override_spans(), []
    assert len(spans) > 40
    for file, line, words in spans:
        for word in words:
            key, value = word.split("=", 1)
            try:
                if key not in key_facts():
                    raise KeyError(f"unknown or renamed key {key}")
                if _PLACEHOLDER_WORD.match(value) or "..." in value or "<" in value:
                    continue
                try:
                    _check_override(word)
                except Exception:
                    alternatives = re.split(r"[|,]", value)
                    if len(alternatives) == 1:
                        raise
                    for alternative in alternatives:
                        _check_override(f"{key}={alternative}")
            except Exception as err:  # noqa: BLE001 - collected, reported together
                bad.append(f"{file}:{line}: {word}: {str(err).splitlines()[0]}")
    assert not bad, "\n".join(bad)


def test_extraction_finds_the_documented_commands():
    """Guards the extractor: multi-line spans, table cells, shell variables and '&' are read."""
    texts = [c.text for c in COMMANDS]
    assert len(COMMANDS) > 150
    assert {c.file for c in COMMANDS} >= {"README.md", "docs/analysis.md", "docs/study.md", "docs/tokenizers.md"}
    assert any(t.startswith("repae evaluate --checkpoint pretrained/sit-repae-sdvae") and "--inception-weights" in t
               for t in texts)  # an inline span over a line break
    assert "repae study --shard 2/2 --threads 1" in texts  # after '&'
    assert any(c.verb == "bench" and "tokenizer.preset=f8d4" in c.argv and "--sample" in c.argv
               for c in COMMANDS)  # $S expanded
    assert any(c.launcher[:1] == ("torchrun",) and c.verb == "sample" for c in COMMANDS)
    assert any(c.script == "scripts/make_encoder_asset.py" for c in COMMANDS)


# ---------------------------------------------------------------------------------------------------------
# Execution at tiny size (slow)
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exit_code(result: list[int]):
    """SystemExit (argparse, --help, a script's sys.exit) becomes an exit code; torch threads are restored."""
    threads = torch.get_num_threads()
    try:
        yield
    except SystemExit as exit_:
        result[0] = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        torch.set_num_threads(threads)


def _call(argv: list[str]) -> int:
    """repae.cli.main in process."""
    result = [0]
    with _exit_code(result):
        result[0] = repae_main(argv)
    return result[0]


def _tiny_main(argv: list[str]) -> int:
    """repae.cli.main of a script's own repae call, made tiny by TINY like a doc command."""
    return _call(tiny_argv(DocCommand("script", 0, " ".join(argv), False, (), None, tuple(argv))))


def _run_script(cmd: DocCommand, argv: list[str], folder: Path) -> int:
    result = [0]
    path = ROOT / cmd.script
    if cmd.script == "scripts/make_vae_asset.py":
        # Without --out it writes the shipped asset in place, and its evaluate call scores 1,000 images: load it,
        # send it to the test folder and make each of its repae calls tiny (TINY), then call its main.
        spec = importlib.util.spec_from_file_location("make_vae_asset_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main = _tiny_main
        out = folder / "repae-vae-fmnist"
        with _exit_code(result):
            module.main_([*argv, "--out", str(out)])
        if result[0] == 0:
            assert (out / "record.json").is_file(), "make_vae_asset.py wrote no record.json"
        return result[0]
    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        import runpy

        with _exit_code(result):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old
    return result[0]


class Workshop:
    """One folder where the documented artifacts are made once (the tiny versions of ARTIFACTS' commands),
    and the memo of every tiny command already run (identical tiny commands run once)."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[tuple, int] = {}
        import numpy as np

        from repae.data import build_dataset

        gen = torch.Generator().manual_seed(0)
        arrays = {}
        for split, n in (("train", 64), ("test", 32)):
            data = build_dataset("embedded", resolution=32, split=split)
            idx = torch.randperm(len(data), generator=gen)[:n].tolist()
            arrays[f"{split}_images"] = np.stack([data[i][0].numpy().transpose(1, 2, 0) for i in idx])
            arrays[f"{split}_labels"] = np.array([int(data[i][1]) for i in idx], dtype=np.int64)
        np.savez(root / TINY_DATA, **arrays)

    def provide(self, path: str, folder: Path) -> None:
        """Make ``path`` once, in the workshop, and link it into ``folder`` at the documented place."""
        made = path if path in ARTIFACTS else "runs/repae-fmnist"  # a STAND_IN
        if not (self.root / made).exists():
            for dep in ARTIFACTS[made][1]:
                self.provide(dep, self.root)
            producer = _command("ARTIFACTS", 0, ARTIFACTS[made][0], inline=False)
            code = self._execute(producer, tiny_argv(producer), self.root)
            assert code == 0 and (self.root / made).exists(), f"{ARTIFACTS[made][0]!r} (tiny) did not make {made}"
        if folder != self.root and not (folder / path).exists():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).symlink_to(self.root / made, target_is_directory=True)

    def run(self, cmd: DocCommand, folder: Path) -> int:
        """The tiny command in ``folder``; a command of ARTIFACTS runs (once) in the workshop; identical tiny
        commands run once."""
        argv = tiny_argv(cmd)
        for path, (text, _) in ARTIFACTS.items():
            producer = _command("ARTIFACTS", 0, text, inline=False)
            if (cmd.script, argv) == (producer.script, tiny_argv(producer)):
                self.provide(path, folder)
                return 0
        key = (cmd.script, tuple(argv))
        if key not in self.results:
            for path in needs(cmd):
                self.provide(path, folder)
            self.results[key] = self._execute(cmd, argv, folder)
        return self.results[key]

    def _execute(self, cmd: DocCommand, argv: list[str], folder: Path) -> int:
        if not (folder / TINY_DATA).exists():
            (folder / TINY_DATA).symlink_to(self.root / TINY_DATA)
        for flag in ("--out", "--out-npz", "--out-dir"):  # a documented --out into the source tree (e.g.
            if flag in argv:  # src/repae/assets/x.safetensors) is written under the test folder
                (folder / argv[argv.index(flag) + 1]).parent.mkdir(parents=True, exist_ok=True)
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            assert Path.cwd().resolve() != ROOT.resolve()  # never write into the checkout
            code = _run_script(cmd, argv, folder) if cmd.script else _call(list(argv))
        finally:
            os.chdir(cwd)
        if code == 0 and cmd.verb not in ("study", "config"):
            for flag in ("--out", "--out-npz"):
                if flag in argv:
                    assert (folder / argv[argv.index(flag) + 1]).exists(), f"{cmd.text!r}: {flag} not written"
        return code


@pytest.fixture(scope="module")
def workshop(tmp_path_factory):
    return Workshop(tmp_path_factory.mktemp("docs-workshop"))


RUNNABLE = [c for c in COMMANDS if c.script or not is_mention(c)]


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE, ids=_ids(RUNNABLE))
def test_every_command_runs(cmd, workshop, tmp_path, monkeypatch):
    if (reason := skip_reason(cmd)) is not None:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    code = workshop.run(cmd, tmp_path)
    assert code == 0, f"{cmd.text!r} at tiny size ({' '.join(tiny_argv(cmd))}) exited {code}"
