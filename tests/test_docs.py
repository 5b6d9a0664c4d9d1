"""The docs are tests: every command in README.md and docs/**/*.md is run here or marked as an example.

What counts as a command, and the ``<!-- not run: REASON -->`` marker: ``tests/docs_blocks.py`` and
README.md, section *Tests*. The commands in :data:`RUN` run verbatim in a temporary copy of the
repository's layout (the packages and docs linked in; what a command writes stays there), with the
placeholders the docs use made real and tiny (``DATA``, ``path/to/model``, ``.data/my-photos``,
``runs/demo/snapshots/model-00005000``, ``runs/parser/best``, ``../shared/datasets/ccp``; ``/data/ccp``
is replaced by the latter) and tiny sizes appended as ordinary flags (``--tiny --steps 1 ...``; later
flags win). Training and torchrun run in new processes, the other ``python -m`` tools in this one
(``runpy``, as ``python -m`` runs them, in the workspace and its environment: it saves an interpreter
start per command). Every other command of a block must carry a marker saying why it is not run.
Every command, run or not, and every inline ``python -m ...`` reference must name a module that exists
and only flags its ``--help`` lists; every repository path the docs name must exist, and so must every
``smis.x.y`` / ``train.x.y`` name. README.md's ``python`` blocks run in order as one script, from a
folder outside the repository.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from docs_blocks import (
    REPO,
    Block,
    Command,
    all_blocks,
    all_commands,
    blocks,
    commands,
    doc_files,
    inline_code,
    normalize,
    prose,
    rel,
)
from PIL import Image
from test_train_support import blob_sample, write_generic

from smis import labels as L
from smis.parsing import ParserNet, get_parser_config

PROJECT_PACKAGES = ("smis", "train", "export", "demo", "devtools")
#: How each command in RUN is made tiny: appended to every ``python -m train`` single-process run.
TINY_TRAIN = "--steps 1 --batch-size 2 --vgg none --workers 0 --no-progress --no-tensorboard --sample-every 0"


@dataclass(frozen=True)
class Run:
    """A documented command the tests run: verbatim, then ``append``; ``replace`` swaps absolute
    placeholder paths (old -> a workspace-relative path); ``stand_in`` = (source, placeholder): a copy
    of what an earlier command (or the repository) made, where the command expects a real run's file;
    ``fresh``: a folder removed first (the command's doc starts without it); ``check(workspace, output)``
    asserts on the result. ``process``: run in a new process (training, torchrun); the other
    ``python -m`` commands run in this one (``runpy``, as ``python -m`` does, in the workspace with the
    same environment), which saves an interpreter start each."""

    command: str
    append: str = ""
    replace: tuple[tuple[str, str], ...] = ()
    stand_in: tuple[str, str] | None = None
    fresh: str | None = None
    check: Callable[[Path, str], None] | None = None
    process: bool = False
    timeout: float = 180.0


def _graphs_in(folder: Path, *names: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        for name in names:
            assert (ws / folder / name).is_file(), f"{folder / name} was not written:\n{out[-2000:]}"
    return check


def _bundled_export_goes_to_the_cache(ws: Path, out: str) -> None:
    # (that smis/assets is left as it was, every group checks)
    cached = sorted((ws.parent / "cache" / "onnx").glob("*/generator.onnx"))  # $SMIS_CACHE
    assert cached, f"no graphs in $SMIS_CACHE/onnx:\n{out[-2000:]}"


def _status(folder: str, status: str = "finished") -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        assert json.loads((ws / folder / "status.json").read_text())["status"] == status, out[-2000:]
    return check


def _prepared(folder: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        meta = json.loads((ws / folder / "classes.json").read_text())
        assert meta["prepared"]["format"] == "ccp" and (ws / folder / "train.txt").is_file(), out[-2000:]
    return check


def _files(*paths: str) -> Callable[[Path, str], None]:
    def check(ws: Path, out: str) -> None:
        for p in paths:
            assert (ws / p).exists(), f"{p} was not written:\n{out[-2000:]}"
    return check


#: The commands that run, in this order (later ones use what earlier ones wrote), by group.
RUN: dict[str, list[Run]] = {
    "export": [
        Run("python -m export onnx --model path/to/model",
            check=_graphs_in(Path("path/to/model"), "generator.onnx", "encoder.onnx", "generator-maps.onnx")),
        Run("python -m export onnx --model path/to/model --fp16",
            check=_graphs_in(Path("path/to/model"), "generator-fp16.onnx")),
        Run("python -m export inspect path/to/model/generator.onnx"),
        Run("python -m export flops"),
        Run("python -m export onnx --model smis/assets/ccp-demo", check=_bundled_export_goes_to_the_cache),
    ],
    "train": [
        Run("python -m train.prepare --format ccp --src /data/ccp --out .gpu/ccp384 --height 384 --width 256",
            replace=(("/data/ccp", "../shared/datasets/ccp"),), check=_prepared(".gpu/ccp384")),
        Run("python -m train.prepare --format ccp --src ../shared/datasets/ccp --out .gpu/ccp384 --height 384 "
            "--width 256", fresh=".gpu/ccp384", check=_prepared(".gpu/ccp384")),
        Run("python -m train.prepare --format ccp --src ../shared/datasets/ccp --out .data/ccp192 --height 192 "
            "--width 128", check=_prepared(".data/ccp192")),
        Run("python -m train --preset demo --data .gpu/ccp384 --format generic --batch-size 32 --amp bf16 "
            "--outdir runs/demo", append=f"--tiny --d-ndf 16 {TINY_TRAIN}", check=_status("runs/demo"), process=True),
        Run("python -m train --preset ccp-cpu --data .data/my-photos --init-from smis/assets/ccp-demo --epochs 20 "
            "--outdir runs/mine --resume auto", append=TINY_TRAIN, check=_status("runs/mine"), process=True),
        Run("python -m train --preset ccp-cpu --data .data/ccp192 --batch-size 8 --epochs 12 --decay-fraction 0.5 "
            "--vgg partial --channels-last true --reuse-fake --kl-free-bits 6 --kl-per-image true --lambda-rec 10 "
            "--lambda-latent 5 --lambda-mode-seek 5 --mode-seek-target 0.1 --mode-seek-images 4 --augment false "
            "--init-from smis/assets/ccp-demo --init-step 0 --outdir runs/ccp-cpu-next --resume auto --log-every 25 "
            "--sample-every 100 --ckpt-minutes 10 --keep 20 --max-minutes 120 --no-tensorboard --no-progress "
            "--device cpu", append="--steps 1 --batch-size 2 --workers 0 --sample-every 0",
            check=_status("runs/ccp-cpu-next"), process=True),
        Run("python -m train.prepare --format ccp --src ../shared/datasets/ccp --out .data/ccp384 --height 384 "
            "--width 256", check=_prepared(".data/ccp384")),
        Run("python -m train --preset ccp-cpu --height 384 --width 256 --enhancer-channels 20 --train-only enhancer "
            "--data .data/ccp384 --batch-size 8 --epochs 6 --decay-fraction 0.5 --vgg partial --channels-last true "
            "--reuse-fake --kl-free-bits 2 --kl-per-image true --lambda-rec 10 --lambda-latent 5 --lambda-mode-seek 5 "
            "--mode-seek-target 0.1 --mode-seek-images 4 --augment false --init-from smis/assets/ccp-demo-384 "
            "--init-step auto --outdir runs/ccp384-enh --resume auto --log-every 5 --sample-every 50 --ckpt-minutes 15 "
            "--keep 20 --max-minutes 90 --no-tensorboard --no-progress --device cpu",
            append="--init-step 0 --steps 1 --batch-size 2 --workers 0 --sample-every 0",
            check=_status("runs/ccp384-enh"), process=True),
        Run("python -m train.evaluate --model runs/ccp384-enh/snapshots/model-00000050 --baseline smis/assets/ccp-demo "
            "--data .data/ccp384 --split val --n 2 --m 1 --num-masks 1 --fid-samples 5 "
            "--out runs/ccp384-enh/evals/fid5",
            append="--fid-samples 1 --no-reconstruction",
            stand_in=("smis/assets/ccp-demo-384", "runs/ccp384-enh/snapshots/model-00000050"),
            check=_files("runs/ccp384-enh/evals/fid5/metrics.json")),
        Run("python -m train.monitor --model smis/assets/ccp-demo --data .data/ccp192 --images 24",
            append="--images 2"),
        Run("python -m train.evaluate --model runs/demo/snapshots/model-00005000 --data .gpu/ccp384 --format generic "
            "--split val --out runs/demo/eval", append="--n 2 --m 1 --num-masks 1",
            check=_files("runs/demo/eval/metrics.json", "runs/demo/eval/metrics.md")),
        Run("python -m train.monitor --state runs/demo/checkpoints/training-state-00005000.pt --data .gpu/ccp384 "
            "--images 16", append="--images 2 --d-images 2",
            stand_in=("runs/demo/checkpoints/training-state-00000001.pt",
                      "runs/demo/checkpoints/training-state-00005000.pt")),
        Run("python -m train.publish runs/demo --dry-run", check=_files("runs/demo/publish/config.json")),
        Run("python -m train.human_parser --evaluate runs/parser/best --data .gpu/ccp384 --val-split val",
            append="--workers 0"),
        Run("python -m train.human_parser --export-onnx runs/parser/best", check=_files("runs/parser/best/model.onnx")),
        Run("python -m train.human_parser --evaluate smis/assets/ccp-parser --data .gpu/ccp384 --val-split val "
            "--height 384 --width 256", append="--workers 0 --max-items 4"),
    ],
    "torchrun": [
        Run("torchrun --standalone --nproc_per_node=2 -m train --device cpu --preset demo --tiny --data DATA "
            "--batch-size 4 --steps 10 --vgg none --workers 0 --outdir runs/cpu-smoke",
            append="--steps 2 --no-progress --no-tensorboard", check=_status("runs/cpu-smoke"), process=True),
    ],
}
RUN_COMMANDS = {normalize(r.command): r for runs in RUN.values() for r in runs}


# ---------------------------------------------------------------------------------------------
# Every command is run or marked
# ---------------------------------------------------------------------------------------------

def coverage_problems(doc_blocks: list[Block], run: set[str]) -> list[str]:
    """What keeps ``doc_blocks`` from being tests: commands neither in ``run`` nor marked, markers
    that match nothing, python blocks outside README.md without a marker, commands in blocks that are
    not labelled as shell."""
    problems = []
    for block in doc_blocks:
        marker = block.marker
        if block.lang == "shell":
            for cmd in commands(block):
                if cmd.text in run and cmd.reason is not None:
                    problems.append(f"{cmd.where}: marked as not run, but tests/test_docs.py runs it: {cmd.text}")
                elif cmd.text not in run and cmd.reason is None:
                    problems.append(f"{cmd.where}: neither run by tests/test_docs.py (RUN) nor marked with "
                                    f"<!-- not run: REASON --> before its block: {cmd.text}")
                elif cmd.reason is not None and not cmd.reason.strip():
                    problems.append(f"{cmd.where}: a not-run marker needs a reason: {cmd.text}")
            if marker is not None:
                texts = [c.text for c in commands(block)]
                for text in marker.texts:
                    if not any(text in t for t in texts):
                        problems.append(f"{block.where}: the marker names `{text}`, which no command of the "
                                        "block contains")
                if marker.block_reason is None and not marker.texts:
                    problems.append(f"{block.where}: unreadable marker {marker.text!r} "
                                    "(`<!-- not run: REASON -->`)")
        elif block.lang == "python" and block.doc != "README.md" and marker is None:
            problems.append(f"{block.where}: a python block outside README.md must be run by a test or marked "
                            "<!-- not run: REASON -->")
        elif block.lang != "python":
            for number, line in block.lines:
                if line.lstrip().startswith(("python ", "python3 ", "pip ", "torchrun ", "$ ")):
                    problems.append(f"{block.doc}:{number}: a command in a ```{block.lang} block: label the "
                                    f"block ```bash so it is run or marked")
    return problems


def test_every_documented_command_is_run_or_marked():
    problems = coverage_problems(all_blocks(), set(RUN_COMMANDS))
    found = {c.text for c in all_commands()}
    problems += [f"RUN names a command no doc has (any more): {text}" for text in RUN_COMMANDS if text not in found]
    assert not problems, "\n".join(problems)


def test_an_unmarked_command_that_is_not_run_fails(tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text("""Run it:

```bash
python -m export flops        # run by the test
python -m export onnx --model mine \\
    --fp16
```

<!-- not run `tensorrt`: needs TensorRT -->

    python -m export tensorrt --onnx x.onnx
    python -m export inspect x.onnx

<!-- not run: needs a GPU -->
```sh
python -m train --device cuda
```

```
pip install something
```

<!-- not run `nothing like it`: a stale marker -->
```bash
python -m export flops
```
""")
    problems = coverage_problems(blocks(doc), {"python -m export flops"})
    assert problems == [
        "DOC.md:5: neither run by tests/test_docs.py (RUN) nor marked with <!-- not run: REASON --> before its "
        "block: python -m export onnx --model mine --fp16",
        "DOC.md:12: neither run by tests/test_docs.py (RUN) nor marked with <!-- not run: REASON --> before its "
        "block: python -m export inspect x.onnx",
        "DOC.md:20: a command in a ``` block: label the block ```bash so it is run or marked",
        "DOC.md:24: the marker names `nothing like it`, which no command of the block contains",
    ]


# ---------------------------------------------------------------------------------------------
# Modules, flags, paths and names the docs mention exist
# ---------------------------------------------------------------------------------------------

@functools.cache
def help_text(target: str, sub: str | None) -> str:
    """``python -m target [sub] --help`` (or ``python app.py``), run in this process."""
    argv = [target, *([sub] if sub else []), "--help"]
    out = io.StringIO()
    saved = sys.argv[:]
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), contextlib.suppress(SystemExit):
            if target.endswith(".py"):
                runpy.run_path(str(REPO / target), run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return out.getvalue()


def invocation(text: str) -> tuple[str, str | None, list[str]] | None:
    """(module or script, subcommand, the words after it) of a ``python -m`` / ``python app.py`` /
    ``torchrun -m`` command of this project; None for any other command."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value python ...
        words = words[1:]
    if not words or words[0] not in ("python", "python3", "torchrun"):
        return None
    if "-m" in words:
        i = words.index("-m")
        target, rest = words[i + 1] if i + 1 < len(words) else "", words[i + 2:]
    elif words[0] != "torchrun" and len(words) > 1 and words[1].endswith(".py"):
        target, rest = words[1], words[2:]
    else:
        return None
    if target.split(".")[0] not in PROJECT_PACKAGES and target != "app.py":
        return None
    stop = next((k for k, w in enumerate(rest) if w in ("&&", "|", ";", "&")), len(rest))
    rest = rest[:stop]
    sub = rest[0] if rest and not rest[0].startswith("-") and target == "export" else None
    return target, sub, rest


def _mentions() -> list[tuple[str, str]]:
    """(where, text) of every command in a block and every inline ``python``/``torchrun`` reference."""
    out = [(c.where, c.text) for c in all_commands()]
    for path in doc_files():
        out += [(rel(path), s) for s in inline_code(path) if s.split()[0] in ("python", "torchrun")
                or re.match(r"[A-Z_]+=\S* python ", s)]
    return out


def test_documented_modules_and_flags_exist():
    problems = []
    for where, text in _mentions():
        found = invocation(text)
        if found is None:
            continue
        target, sub, rest = found
        if target.endswith(".py"):
            exists = (REPO / target).is_file()
        else:
            try:
                exists = importlib.util.find_spec(target) is not None
            except ModuleNotFoundError:
                exists = False
        if not exists:
            problems.append(f"{where}: `{text}`: no module or script {target}")
            continue
        helped = help_text(target, sub)
        listed = set(re.findall(r"--[\w-]+", helped))
        if not listed:
            problems.append(f"{where}: `{target} {sub or ''} --help` printed no options:\n{helped[-1500:]}")
            continue
        for word in rest:
            flag = word.split("=")[0]
            if re.fullmatch(r"--[\w-]+", flag) and flag not in listed:
                problems.append(f"{where}: `{text}`: {flag} is not an option of {target} {sub or ''}".rstrip())
    assert not problems, "\n".join(problems)


#: First path components that are the repository's own (other paths in the docs are placeholders or
#: things a command writes: runs/, RUN/, DATA, .data/, .gpu/, /data/..., path/to/model).
REPO_ROOTS = {*PROJECT_PACKAGES, "docs", "tests", ".ci"}
REPO_FILES = re.compile(r"app\.py|pyproject\.toml|LICENSE|README\.md|requirements[\w-]*\.txt")


def _repo_path(word: str) -> str | None:
    """``word`` as a repository path if it names one (possibly with <placeholders> or globs)."""
    word = word.strip("\"'(),;:")
    word = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
    word = word.rstrip(".").rstrip("/")
    if "/" not in word:
        return word if REPO_FILES.fullmatch(word) else None
    first = word.split("/")[0]
    return word if first in REPO_ROOTS else None


def _exists(path: str) -> bool:
    pattern = re.sub(r"<[^>]*>|X{4,}|\{[^}]*\}|\.\.\.", "*", path)
    if any(ch in pattern for ch in "*?["):
        return any(REPO.glob(pattern))
    return (REPO / pattern).exists()


def test_documented_paths_exist():
    problems = []
    for path in doc_files():
        words = [w for span in inline_code(path) for w in span.split()]
        words += [w for c in all_commands() if c.doc == rel(path) for w in c.text.split()]
        for word in words:
            repo_path = _repo_path(word)
            if repo_path and not _exists(repo_path):
                problems.append(f"{rel(path)}: `{repo_path}` does not exist")
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
            target = target.split("#")[0]
            if target and not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                problems.append(f"{rel(path)}: the link target {target} does not exist")
    assert not problems, "\n".join(sorted(set(problems)))


DOTTED = re.compile(rf"(?:{'|'.join(PROJECT_PACKAGES)}|app)(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = {"txt", "md", "json", "jsonl", "py", "png", "jpg", "pt", "pth", "onnx", "safetensors", "csv", "gif"}


def _onnx_metadata_keys() -> set[str]:
    """``smis.config``, ``smis.palette``, ...: keys of the exported graphs' metadata, not Python names."""
    sources = (REPO / "smis" / "onnx_format.py", REPO / "export" / "onnx.py")
    return {k for f in sources for k in re.findall(r'"(smis\.\w+)"', f.read_text())}


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        module = ".".join(parts[:k])
        try:
            obj = importlib.import_module(module)
        except ImportError:
            continue
        try:
            for attr in parts[k:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_documented_python_names_exist():
    problems = []
    metadata_keys = _onnx_metadata_keys()
    for path in doc_files():
        for span in inline_code(path):
            for word in span.split():
                m = DOTTED.match(word.strip("`(),:"))
                if not m or m.group(0).rsplit(".", 1)[-1] in FILE_SUFFIXES or m.group(0) in metadata_keys:
                    continue
                if not _resolves(m.group(0)):
                    problems.append(f"{rel(path)}: `{m.group(0)}` does not resolve (module and attributes)")
    assert not problems, "\n".join(sorted(set(problems)))


# ---------------------------------------------------------------------------------------------
# Running the commands
# ---------------------------------------------------------------------------------------------

def _ccp_tree(root: Path) -> Path:
    """A CCP-layout folder (images/NNNN.jpg, labels/NNNN.png with fine ids 0..58): 4 train, 2 val photos."""
    fine = [0, 19, 41, 4, 14, 25, 45, 43, 2, 47]  # one fine id of each of the 10 groups
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, stem in enumerate(("0001", "0002", "0003", "0004", "0851", "0852")):
        photo, labels = blob_sample(i, 96, 64)
        Image.fromarray(photo).save(root / "images" / f"{stem}.jpg", quality=95)
        Image.fromarray(np.array(fine, np.uint8)[labels]).save(root / "labels" / f"{stem}.png")
    return root


def _generic(root: Path, n: int, height: int, width: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        photo, labels = blob_sample(100 + i, height, width)
        Image.fromarray(photo).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(labels).save(root / "labels" / f"{i:04d}.png")
    (root / "classes.json").write_text(json.dumps(
        {"names": list(L.CCP10_CLASSES), "colors": [list(c) for c in L.CCP10_PALETTE]}))
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Path:
    """The repository's layout (packages, docs, requirements linked in) with the docs' placeholders."""
    top = tmp_path_factory.mktemp("docs-commands")
    ws = top / "repo"
    ws.mkdir()
    for entry in REPO.iterdir():
        if (entry / "__init__.py").is_file() or entry.name in ("docs", "app.py") or \
                re.fullmatch(r"requirements[\w-]*\.txt", entry.name):
            (ws / entry.name).symlink_to(entry)
    shutil.copytree(tiny_model_dir, ws / "path" / "to" / "model")
    shutil.copytree(tiny_model_dir, ws / "runs" / "demo" / "snapshots" / "model-00005000")
    torch.manual_seed(0)
    ParserNet(get_parser_config("tiny", height=64, width=64)).eval().save_pretrained(ws / "runs" / "parser" / "best")
    write_generic(ws / "DATA", n=8)
    _generic(ws / ".data" / "my-photos", 4, 192, 128)
    _ccp_tree(top / "shared" / "datasets" / "ccp")
    (top / "cache").mkdir()
    return ws


def _environment(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMIS_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_", "TORCHELASTIC"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ws), SMIS_CACHE=str(ws.parent / "cache"),
               PATH=os.pathsep.join([str(ws / ".bin"), str(Path(sys.executable).parent), env.get("PATH", "")]))
    bin_dir = ws / ".bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "python").symlink_to(sys.executable)
    return env


def _documented(text: str) -> Command:
    matches = [c for c in all_commands() if c.text == normalize(text)]
    assert matches, f"no doc has the command any more (update RUN in tests/test_docs.py): {text}"
    return matches[0]


def _run_here(line: str, ws: Path, env: dict[str, str]) -> tuple[int, str]:
    """``python -m MODULE ARGS`` in this process: runpy in the workspace, with ``env``; (status, output)."""
    words = shlex.split(line)
    assert words[:2] == ["python", "-m"], line
    out = io.StringIO()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        mp.chdir(ws)
        for key in set(os.environ) - set(env):
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(sys, "argv", words[2:])
        try:
            runpy.run_module(words[2], run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            torch.set_num_threads(threads)
    return status, out.getvalue()


def _run_group(group: str, ws: Path) -> None:
    env = _environment(ws)
    assets = sorted(p.relative_to(REPO) for p in (REPO / "smis" / "assets").rglob("*"))
    for spec in RUN[group]:
        cmd = _documented(spec.command)
        line = cmd.text
        for old, new in spec.replace:
            line = line.replace(old, new)
        line = f"{line} {spec.append}".strip()
        if spec.stand_in:
            source, target = (ws / p for p in spec.stand_in)
            (shutil.copytree if source.is_dir() else shutil.copy)(source.resolve(), target)
        if spec.fresh:
            shutil.rmtree(ws / spec.fresh, ignore_errors=True)
        start = time.monotonic()
        if spec.process:
            proc = subprocess.run(["bash", "-c", line], cwd=ws, env=env, capture_output=True, text=True,
                                  timeout=spec.timeout)
            status, out = proc.returncode, proc.stdout + proc.stderr
        else:
            status, out = _run_here(line, ws, env)
        print(f"{time.monotonic() - start:5.1f} s  {cmd.where}  {line}")
        assert status == 0, f"{cmd.where}: `{line}` exited {status}:\n{out[-4000:]}"
        if spec.check:
            spec.check(ws, out)
    after = sorted(p.relative_to(REPO) for p in (REPO / "smis" / "assets").rglob("*"))
    assert after == assets, f"a documented command changed smis/assets: {set(after) ^ set(assets)}"


def test_documented_export_commands_run(workspace):
    _run_group("export", workspace)


def test_documented_data_training_and_parser_commands_run(workspace):
    _run_group("train", workspace)


def test_documented_torchrun_smoke_runs(workspace):
    _run_group("torchrun", workspace)


# ---------------------------------------------------------------------------------------------
# README: the install command installs the project; the library snippets run from any folder
# ---------------------------------------------------------------------------------------------

def test_readme_install_command_installs_the_project():
    first = next(b for b in all_blocks() if b.doc == "README.md" and b.lang == "shell")
    install = first.lines[0][1]
    assert re.search(r"pip install -r requirements\.txt -e \.(\s|$)", install), install
    requirements = (REPO / "requirements.txt").read_text()
    assert not re.search(r"^\s*-e\s", requirements, re.M), "a Space installs requirements.txt before the repo exists"


def test_readme_python_blocks_run_from_another_folder(tmp_path):
    code = "\n\n".join("\n".join(line for _, line in b.lines) for b in all_blocks()
                       if b.doc == "README.md" and b.lang == "python")
    (tmp_path / "readme.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMIS_")}
    # PYTHONPATH stands in for README's `pip install -e .`, so this checkout is the one tested.
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), SMIS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "readme.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "result.png").is_file()
