"""Figures written to the run directory (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_nmi_heatmap(matrix: np.ndarray, path: Path, *, title: str = "") -> Path:
    """The C x C NMI matrix between clusterings as an annotated heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(matrix)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * c, 1.6 + 0.45 * c))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.6 else "black")
    off = matrix[~np.eye(c, dtype=bool)]
    ax.set_title(f"NMI between clusterings {title}\nmean off-diagonal {off.mean():.3f}", fontsize=9)
    ax.set_xlabel("clustering")
    ax.set_ylabel("clustering")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
