"""The documentation a user reads stays true: every method has its page, the preset tables match the presets, and
no shipped file points at material a clone does not have."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import preset_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", sorted(preset_table.FAMILIES))
def test_each_method_page_lists_its_presets_as_they_are(method):
    page = ROOT / "docs" / "methods" / f"{method}.md"
    text = page.read_text()
    assert text == preset_table.refreshed(text, method), (
        f"{page.name}: the preset table is stale; run python scripts/preset_table.py --write")
    assert "```bibtex" in text


def test_every_preset_is_on_a_method_page():
    listed = {p for m in preset_table.FAMILIES for p in preset_table.table(m).split("`")[1::2]}
    from engine.config import available_presets

    assert set(available_presets()) == listed


def test_no_shipped_file_cites_the_private_specs():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"shared/specs|specs/[a-z_]+\.md|\bspec\s?§|\s\(spec(?: pitfall|\)| [\d§])|\bspec (pitfall|section)")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg") and path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line) and name != "tests/test_docs.py":
                    offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders[:40]) + f"\n({len(offenders)} lines)"
