"""docs/adding_a_method.md stays true: its annotated files, written into a copy of the repository, pass their own
test and train with the documented command, and its table names every member of ClusteringMethod.

`write_guide_files(root)` is also the guide's way to materialise the example in a checkout.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adding_a_method.md"

# `<!-- file: PATH -->` or `<!-- append: PATH -->` on its own line, then a fenced code block.
BLOCK = re.compile(r"^<!-- (?P<mode>file|append): (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)
HOOKS_TABLE = re.compile(r"<!-- hooks-table -->\n(?P<table>.*?)<!-- /hooks-table -->", re.S)


def guide_blocks(text: str | None = None) -> list[tuple[str, str, str]]:
    """(mode, path, body) of every annotated block of the guide, in order."""
    text = GUIDE.read_text() if text is None else text
    return [(m["mode"], m["path"], m["body"]) for m in BLOCK.finditer(text)]


def write_guide_files(root: str | os.PathLike) -> list[Path]:
    """Write the guide's files into the repository at `root` (new files only) and append its config section."""
    root = Path(root)
    blocks = guide_blocks()
    clashes = [str(root / rel) for mode, rel, _ in blocks if mode == "file" and (root / rel).exists()]
    if clashes:  # checked before writing anything
        raise FileExistsError(f"{', '.join(clashes)} exist already; the guide only adds new files")
    written = []
    for mode, rel, body in blocks:
        target = root / rel
        if mode == "file":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
        else:
            with target.open("a") as f:
                f.write("\n" + body)
        written.append(target)
    return written


def method_name() -> str:
    names = [Path(rel).stem for mode, rel, _ in guide_blocks() if mode == "file" and rel.startswith("models/")]
    assert len(names) == 1, f"the guide should add exactly one model file, found {names}"
    return names[0]


def copy_repository(dst: Path) -> None:
    """The working tree's files that git tracks or would track (ignored ones, such as runs/, left out)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                 capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but caches and runs
        skip = {".git", "runs", "__pycache__", ".pytest_cache", "wandb"}
        listing = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                   if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)]
    for rel in filter(None, listing):
        source = REPO / rel
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / rel)


def test_guide_annotates_the_pieces_of_a_method_and_they_are_not_in_the_repository():
    blocks = guide_blocks()
    name = method_name()
    files = {rel for mode, rel, _ in blocks if mode == "file"}
    assert files == {f"models/{name}.py", f"losses/{name}.py", f"configs/{name}_digits.yaml", f"tests/test_{name}.py"}
    assert [(mode, rel) for mode, rel, _ in blocks if mode == "append"] == []   # the method declares its keys
    for rel in files:  # the example lives only in the guide
        assert not (REPO / rel).exists(), f"{rel} is in the repository; the guide's example must stay out of it"
    assert f"\n{name}:" not in (REPO / "configs" / "main_config.yaml").read_text()
    for mode, rel, body in blocks:
        if rel.endswith(".py"):
            compile(body, rel, "exec")  # a syntax error names the block


def test_hooks_table_names_every_public_member_of_the_base_class():
    from models.base import ClusteringMethod

    table = HOOKS_TABLE.search(GUIDE.read_text())
    assert table, "the guide's hooks table (between <!-- hooks-table --> markers) is missing"
    rows = [line for line in table["table"].splitlines() if line.startswith("| `")]
    named = {re.match(r"\| `(\w+)", row).group(1) for row in rows}
    members = {n for n in vars(ClusteringMethod) if not n.startswith("_")}
    assert named == members, f"missing from the guide: {sorted(members - named)}; not in the base class: " \
                             f"{sorted(named - members)}"


def test_guide_files_pass_their_test_and_train_in_a_copy_of_the_repository(tmp_path):
    repo = tmp_path / "repo"
    copy_repository(repo)
    write_guide_files(repo)
    name = method_name()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)

    tests = subprocess.run([sys.executable, "-m", "pytest", f"tests/test_{name}.py", "-p", "no:cacheprovider",
                            "-o", "addopts=", "-q"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    passed = re.search(r"(\d+) passed", tests.stdout)
    assert passed and int(passed.group(1)) >= 5 and "failed" not in tests.stdout, tests.stdout[-2000:]

    out = tmp_path / "runs"
    run = subprocess.run([sys.executable, "main.py", "--preset", f"{name}_digits", "--epochs", "1",
                          "--steps_per_epoch", "3", "--output_dir", str(out)],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = list(out.glob(f"{name}_digits/*/results.json"))
    assert len(results) == 1, list(out.rglob("*"))
    saved = json.loads(results[0].read_text())
    assert saved["epochs"] == 1 and len(saved["heads"]) == 1
    assert all(0.0 <= saved["heads"][0][m] <= 1.0 for m in ("acc", "nmi", "ari"))
    assert f"method: {name}" in (results[0].parent / "config.yaml").read_text()


def test_block_parser_reads_annotations_and_rejects_overwrites(tmp_path):
    text = ("<!-- file: a/b.py -->\n```python\nx = 1\n```\n\n```python\nnot annotated\n```\n"
            "<!-- append: c.yaml -->\n```yaml\nk: 1\n```\n")
    assert guide_blocks(text) == [("file", "a/b.py", "x = 1\n"), ("append", "c.yaml", "k: 1\n")]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{method_name()}.py").write_text("# someone else's method\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "main_config.yaml").write_text("")
    with pytest.raises(FileExistsError, match="exist already"):
        write_guide_files(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [f"{method_name()}.py", "main_config.yaml"]
    assert (tmp_path / "configs" / "main_config.yaml").read_text() == ""  # nothing written or appended
