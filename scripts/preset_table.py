#!/usr/bin/env python3
"""The settings of every preset of a method, as the markdown table of docs/methods/<method>.md.

Usage:
    python scripts/preset_table.py METHOD [METHOD ...]     # cc, divclust, pica, iic, propos, hadis, digpro, l2c, kingdra
    python scripts/preset_table.py --write                  # refresh the tables inside docs/methods/*.md

The table of docs/methods/<m>.md sits between the lines `<!-- presets:begin -->` and `<!-- presets:end -->`;
tests/test_docs.py fails when a preset changed and the table was not refreshed.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import available_presets  # noqa: E402
from engine.run import load_config  # noqa: E402

DOCS = ROOT / "docs" / "methods"
BEGIN, END = "<!-- presets:begin -->", "<!-- presets:end -->"
# which presets each method document lists (by name prefix)
FAMILIES = {"cc": ("cc_",), "divclust": ("divclust_",), "pica": ("pica_",), "iic": ("iic_",), "propos": ("propos_",),
            "hadis": ("hadis_",), "digpro": ("digpro_",), "l2c": ("mcl_", "kcl_", "spn_"), "kingdra": ("kingdra_",)}


def _schedule(cfg) -> str:
    name = str(cfg.lr_schedule)
    if name == "step":
        name = f"step x{cfg.lr_gamma:g} at {', '.join(str(m) for m in cfg.lr_milestones)}"
    return name + (f", warm-up {cfg.warmup_epochs}" if int(cfg.warmup_epochs) else "")


def _length(cfg) -> str:
    if cfg.get("steps_per_epoch"):
        return f"{cfg.epochs} x {cfg.steps_per_epoch} steps"
    return f"{cfg.epochs} epochs"


def _precision(cfg) -> str:
    return "fp32" if not cfg.amp else ("fp16" if cfg.amp_dtype == "float16" else "bf16") + " autocast"


def _optimizer(cfg) -> str:
    text = f"{cfg.optimizer} {cfg.lr:g}"
    return text + (f", wd {cfg.weight_decay:g}" if float(cfg.weight_decay) else "")


def row(name: str) -> str:
    cfg = load_config(["--preset", name])
    heads = f"{cfg.clusterings} x {cfg.num_clusters}" + (f", D^T {cfg.NMI_target:g}" if int(cfg.clusterings) > 1 else "")
    cells = [f"`{name}`", str(cfg.dataset), str(cfg.backbone), str(cfg.image_size or "—"), str(cfg.augmentation),
             str(cfg.batch_size), _optimizer(cfg), _schedule(cfg), _length(cfg), _precision(cfg), heads]
    return "| " + " | ".join(cells) + " |"


def table(method: str) -> str:
    names = [p for p in available_presets() if p.startswith(FAMILIES[method])]
    lines = ["| preset | dataset | backbone | px | augmentation | batch | optimizer | lr schedule | length | precision "
             "| clusterings x K |", "|" + "---|" * 11]
    return "\n".join(lines + [row(n) for n in names])


def refreshed(text: str, method: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/methods/{method}.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(method)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        for method in FAMILIES:
            path = DOCS / f"{method}.md"
            if path.is_file():
                path.write_text(refreshed(path.read_text(), method))
                print(f"refreshed {path.relative_to(ROOT)}")
        return 0
    unknown = [m for m in argv if m not in FAMILIES]
    if not argv or unknown:
        print(f"usage: preset_table.py METHOD [...] | --write (methods: {', '.join(FAMILIES)})", file=sys.stderr)
        return 2
    for method in argv:
        print(f"## {method}\n\n{table(method)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
