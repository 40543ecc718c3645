"""Figures written to the run directory (matplotlib, headless Agg backend).

`write_plots` draws every figure that one evaluation's outputs allow; the trainer calls it (through
`write_evaluation_plots`) at the end of every evaluation and `scripts/plot_run.py` calls it on a finished run's
files. Each figure is written atomically (temp file + rename) and a figure that fails is reported and skipped:
plotting never stops a run.

Files: `confusion_matrix.png` (after Hungarian matching; needs labels), `cluster_sizes.png`, `nmi_matrix.png`
(C > 1), `training_curves.png` (from metrics.jsonl) and `tsne.png` (from the feature subsample that the
evaluation keeps in predictions.npz; by default only at the final evaluation, it is the one slow figure).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .report import reported_head

CONFUSION_FILE = "confusion_matrix.png"
SIZES_FILE = "cluster_sizes.png"
NMI_FILE = "nmi_matrix.png"
CURVES_FILE = "training_curves.png"
TSNE_FILE = "tsne.png"
TSNE_CHOICES = ("final", "every", "never")

# train/ keys of metrics.jsonl that are not loss terms (plotted elsewhere or not at all)
_NOT_LOSS_TERMS = {"loss", "lr", "images_per_s", "epoch_seconds", "divclust_threshold", "divclust_bank_nmi"}
_EVAL_CLUSTERINGS = ("head", "selected_head", "heads_mean", "consensus", "kmeans", "gmm")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, *, dpi: int = 110) -> Path:
    plt = _pyplot()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    tmp.replace(path)
    return path


def save_nmi_heatmap(matrix: np.ndarray, path: Path, *, title: str = "") -> Path:
    """The C x C NMI matrix between clusterings as an annotated heatmap PNG."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
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
    ticks = range(c) if c <= 20 else range(0, c, max(1, c // 10))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.set_xlabel("clustering")
    ax.set_ylabel("clustering")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


# ----- confusion matrix after Hungarian matching -----------------------------------------------------------
@dataclass
class MatchedConfusion:
    """Contingency table with rows (classes) and columns (clusters) reordered so that the Hungarian-matched pairs
    lie on the diagonal of the first `matched` rows/columns; unmatched classes and clusters follow."""

    table: np.ndarray      # (n_classes, n_clusters) counts
    classes: np.ndarray    # class value of each row
    clusters: np.ndarray   # cluster id of each column
    matched: int           # number of matched pairs (diagonal entries)

    @property
    def accuracy(self) -> float:
        total = self.table.sum()
        return float(np.trace(self.table[: self.matched, : self.matched]) / total) if total else 0.0


def hungarian_confusion(labels: np.ndarray, pred: np.ndarray) -> MatchedConfusion:
    """Confusion matrix of `pred` against `labels` (-1 = unknown, ignored) after the one-to-one matching of clusters
    to classes that maximises matched samples: the matching of `metrics.cluster_acc` (the same contingency table
    and rectangular Hungarian assignment), so the diagonal sums to ACC x N."""
    from scipy.optimize import linear_sum_assignment

    from metrics.clustering import contingency

    labels, pred = np.asarray(labels).astype(np.int64), np.asarray(pred).astype(np.int64)
    if labels.shape != pred.shape or labels.ndim != 1:
        raise ValueError(f"labels and pred must be 1-D of equal length, got {labels.shape} and {pred.shape}")
    known = labels != -1
    if not known.any():
        raise ValueError("no known labels: a confusion matrix needs ground truth")
    y, p = labels[known], pred[known]
    table = contingency(y, p)                              # rows: np.unique(y), columns: np.unique(p)
    classes, clusters = np.unique(y), np.unique(p)
    rows, cols = linear_sum_assignment(table, maximize=True)
    order = np.argsort(rows)                               # matched pairs in class order
    rows, cols = rows[order], cols[order]
    row_order = np.concatenate([rows, np.setdiff1d(np.arange(len(classes)), rows)]).astype(np.int64)
    col_order = np.concatenate([cols, np.setdiff1d(np.arange(len(clusters)), cols)]).astype(np.int64)
    return MatchedConfusion(table[np.ix_(row_order, col_order)], classes[row_order], clusters[col_order], len(rows))


def save_confusion_matrices(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, *,
                            title: str = "", class_names: list[str] | None = None) -> Path:
    """One panel per (name, labels, pred): counts after Hungarian matching, shaded by the fraction of each class."""
    plt = _pyplot()
    matches = [(name, hungarian_confusion(labels, pred)) for name, labels, pred in panels]
    side = max(max(m.table.shape) for _, m in matches)
    size = min(3.0 + 0.32 * side, 9.0)
    fig, axes = plt.subplots(1, len(matches), figsize=(size * len(matches), size), squeeze=False)
    for ax, (name, m) in zip(axes[0], matches):
        fraction = m.table / np.maximum(m.table.sum(axis=1, keepdims=True), 1)
        ax.imshow(fraction, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        n_rows, n_cols = m.table.shape
        if max(n_rows, n_cols) <= 20:
            for i in range(n_rows):
                for j in range(n_cols):
                    if m.table[i, j]:
                        ax.text(j, i, str(int(m.table[i, j])), ha="center", va="center", fontsize=6,
                                color="white" if fraction[i, j] > 0.5 else "black")
        if n_cols <= 40:
            ax.set_xticks(range(n_cols), [str(c) for c in m.clusters], fontsize=6)
        if n_rows <= 40:
            ax.set_yticks(range(n_rows), [class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
                                          for c in m.classes], fontsize=6)
        ax.set_xlabel("cluster (matched order)")
        ax.set_ylabel("class")
        ax.set_title(f"{name}: ACC {m.accuracy:.3f}", fontsize=9)
    fig.suptitle(f"confusion after Hungarian matching {title}".strip(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----- cluster sizes -----------------------------------------------------------------------------------------
def save_cluster_sizes(sizes: list[tuple[str, np.ndarray]], path: Path, *, title: str = "") -> Path:
    """Sorted bar chart of the cluster sizes of each clustering as fractions of N, with its own uniform size 1 / K
    (K = that clustering's number of clusters) as a line."""
    plt = _pyplot()
    n = len(sizes)
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, counts) in zip(axes.flat, sizes):
        counts = np.sort(np.asarray(counts))[::-1]
        k = len(counts)
        share = counts / max(counts.sum(), 1)
        ax.bar(np.arange(k), share, width=0.85, color="tab:blue")
        ax.axhline(1 / max(k, 1), color="tab:red", lw=0.8, ls="--")
        used = int((counts > 0).sum())
        ax.set_title(f"{name}: {used}/{k} used, largest {share[0]:.1%}", fontsize=8)
        ax.yaxis.set_major_formatter(_pyplot().FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
    fig.suptitle(f"cluster sizes as a share of the samples, sorted (dashed: 1 / K) {title}".strip(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----- t-SNE -------------------------------------------------------------------------------------------------
def tsne_embedding(features: np.ndarray, *, seed: int) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA initialisation, seeded) of (N, D) features; perplexity capped for small N.

    torch runs with one thread meanwhile: its idle OpenMP workers (a second OpenMP runtime in the process) otherwise
    compete with scikit-learn's, which made the t-SNE of 2,000 points 3-4x slower in a training process here.
    """
    import torch
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) < 5:
        raise ValueError(f"t-SNE needs (N >= 5, D) features, got shape {features.shape}")
    perplexity = float(min(30.0, (len(features) - 1) / 3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                    random_state=int(seed)).fit_transform(features)
    finally:
        torch.set_num_threads(threads)


def _scatter(ax, embedding: np.ndarray, values: np.ndarray, title: str, *, colour_of: dict | None = None,
             names: dict | None = None) -> None:
    """Points coloured by `values` (-1: unknown, grey); `colour_of` {value: colour slot} keeps colours matched across
    panels, `names` {value: legend text}."""
    values = np.asarray(values)
    unknown = values < 0
    if unknown.any():
        ax.scatter(embedding[unknown, 0], embedding[unknown, 1], s=3, c="lightgrey", linewidths=0, label="unknown")
    known = ~unknown
    distinct = np.unique(values[known])
    slots = colour_of or {v: i for i, v in enumerate(distinct)}
    if len(distinct) <= 20 and max(slots.values(), default=0) < 20:
        cmap = _pyplot().get_cmap("tab10" if max(slots.values(), default=0) < 10 else "tab20")
        for v in sorted(distinct, key=lambda v: slots[v]):
            sel = values == v
            ax.scatter(embedding[sel, 0], embedding[sel, 1], s=3, color=cmap(slots[v]), linewidths=0,
                       label=(names or {}).get(v, str(v)))
        ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    else:  # many clusters: a continuous colour map over the rank of each value
        rank = np.searchsorted(distinct, values[known])
        ax.scatter(embedding[known, 0], embedding[known, 1], s=3, c=rank, cmap="turbo", linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def tsne_figure(embedding: np.ndarray, pred: np.ndarray, labels: np.ndarray | None, *,
                pred_name: str = "predicted cluster", title: str = "", class_names: list[str] | None = None):
    """t-SNE points coloured by predicted cluster and, when `labels` is given, by ground truth, side by side
    (one panel without labels). With labels, a cluster has the colour of the class it is matched to (the Hungarian
    matching of ACC), so equal colours in the two panels are matched pairs; unmatched clusters follow."""
    plt = _pyplot()
    cluster_colours = class_colours = cluster_names = class_legend = None
    if labels is not None and (np.asarray(labels) >= 0).any():
        match = hungarian_confusion(np.asarray(labels), np.asarray(pred))
        class_colours = {int(c): i for i, c in enumerate(sorted(match.classes))}
        cluster_colours = {int(k): class_colours[int(c)] for k, c in zip(match.clusters[:match.matched],
                                                                      match.classes[:match.matched])}
        spare = len(class_colours)
        for k in np.unique(pred):
            if int(k) not in cluster_colours:
                cluster_colours[int(k)], spare = spare, spare + 1
        class_legend = {c: (class_names[c] if class_names and 0 <= c < len(class_names) else str(c))
                        for c in class_colours}
        cluster_names = {k: f"{k} ({class_legend[int(c)]})" for k, c in zip(match.clusters[:match.matched],
                                                                              match.classes[:match.matched])}
    panels = [(pred, f"coloured by {pred_name}" + (" (matched class)" if cluster_names else ""), cluster_colours,
               cluster_names)]
    if labels is not None:
        panels.append((labels, "coloured by ground-truth label", class_colours, class_legend))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), squeeze=False)
    for ax, (values, name, colours, names) in zip(axes[0], panels):
        _scatter(ax, embedding, values, name, colour_of=colours, names=names)
    fig.suptitle(f"t-SNE of {len(embedding)} evaluation features {title}".strip(), fontsize=10)
    fig.tight_layout()
    return fig


def save_tsne(embedding: np.ndarray, pred: np.ndarray, labels: np.ndarray | None, path: Path, *,
              pred_name: str = "predicted cluster", title: str = "", class_names: list[str] | None = None) -> Path:
    """`tsne_figure` written to `path`."""
    return _save(tsne_figure(embedding, pred, labels, pred_name=pred_name, title=title, class_names=class_names),
                 path)


# ----- training curves ---------------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records ({"epoch", "step", "metrics"}); a line cut by a kill is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict], key: str, x: str) -> tuple[list, list]:
    pts = sorted((r[x], r["metrics"][key]) for r in records
                 if key in r.get("metrics", {}) and r.get(x) is not None
                 and isinstance(r["metrics"][key], (int, float)))
    return [p[0] for p in pts], [p[1] for p in pts]


def save_training_curves(records: list[dict], path: Path, *, title: str = "") -> Path | None:
    """train/loss and its terms vs step, evaluation ACC / NMI / ARI vs epoch, and D^R (with DivClust's measured
    NMI and threshold) when present. None when metrics.jsonl holds nothing to plot."""
    keys = {k for r in records for k in r.get("metrics", {})}
    terms = sorted(k for k in keys if k.startswith("train/") and k[6:] not in _NOT_LOSS_TERMS)
    panels: list[tuple[str, str, list[tuple[str, str]]]] = []  # (title, x, [(label, key)])
    if "train/loss" in keys:
        panels.append(("train loss", "step", [("loss", "train/loss")]))
    if terms:
        panels.append(("loss terms", "step", [(k[6:], k) for k in terms]))
    if "train/lr" in keys:
        panels.append(("learning rate", "step", [("lr", "train/lr")]))
    for metric in ("acc", "nmi", "ari"):
        several = "eval/heads/1.acc" in keys                # the mean over heads is the head itself with one
        lines = [(name, f"eval/{name}.{metric}") for name in _EVAL_CLUSTERINGS if f"eval/{name}.{metric}" in keys
                 and (several or name != "heads_mean")]
        if lines:
            panels.append((f"evaluation {metric.upper()}", "epoch", lines))
    diversity = [(label, key) for label, key in (("D^R (evaluation)", "eval/diversity.nmi_mean"),
                                                 ("measured NMI (training bank)", "train/divclust_bank_nmi"),
                                                 ("DivClust threshold", "train/divclust_threshold"))
                 if key in keys]
    if diversity:
        panels.append(("diversity between clusterings", "epoch", diversity))
    if not panels:
        return None
    plt = _pyplot()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, x, lines) in zip(axes.flat, panels):
        for label, key in lines:
            xs, ys = _series(records, key, x)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, ms=3, lw=1.2, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=6)
    fig.suptitle(f"training curves {title}".strip(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----- one evaluation's figures ----------------------------------------------------------------------------
def reported_head_index(results: dict) -> int:
    """Index of the head results.json reports (`report.reported_head`), head 0 when it reports none."""
    entry = reported_head(results)
    return int(entry["index"]) if entry else 0


def _clusterings(results: dict, predictions: dict) -> list[tuple[str, np.ndarray]]:
    out = []
    if "assignments" in predictions:
        heads = np.asarray(predictions["assignments"])
        heads = heads[None] if heads.ndim == 1 else heads
        chosen = reported_head_index(results)
        for i, a in enumerate(heads):
            out.append(("head" if len(heads) == 1 else f"head {i}" + (" (reported)" if i == chosen else ""), a))
    for name, label in (("consensus", "consensus"), ("kmeans", "k-means"), ("gmm", "GMM")):
        if name in predictions:
            out.append((label, np.asarray(predictions[name])))
    return out


def write_plots(out_dir: Path, results: dict, predictions: dict, *, metrics_path: Path | None = None,
                num_clusters: int = 0, seed: int = 0, tsne: bool = True, title: str = "",
                warn: Callable[[str], None] = print, on_written: Callable[[str, Path], None] | None = None,
                class_names: list[str] | None = None) -> list[Path]:
    """Every figure one evaluation allows, into `out_dir`. `predictions` is predictions.npz's content; `results`
    results.json's (or the evaluation's) content. A figure that fails is reported through `warn` and skipped;
    `on_written(name, path)` is called for each written file (wandb upload)."""
    out_dir = Path(out_dir)
    written: list[Path] = []

    def attempt(name: str, draw: Callable[[], Path | None]) -> None:
        try:
            path = draw()
        except Exception as err:  # a figure must never stop a run
            warn(f"plot {name} failed ({type(err).__name__}: {str(err)[:200]}); skipped")
            return
        if path is not None:
            written.append(path)
            if on_written is not None:
                on_written(name, path)

    labels = np.asarray(predictions["labels"]) if "labels" in predictions else None
    has_labels = labels is not None and bool((labels != -1).any())
    clusterings = _clusterings(results, predictions)
    k = max([int(num_clusters)] + [int(p.max()) + 1 for _, p in clusterings if p.size])
    chosen = reported_head_index(results)
    if "assignments" in predictions:
        heads = np.asarray(predictions["assignments"])
        heads = heads[None] if heads.ndim == 1 else heads
        main_name, main_pred = ("head" if len(heads) == 1 else f"head {chosen}"), heads[chosen]
    elif clusterings:
        main_name, main_pred = clusterings[0]
    else:
        main_name, main_pred = None, None

    if has_labels and clusterings:
        panels = [(main_name, labels, main_pred)] + [(n, labels, p) for n, p in clusterings if not n.startswith("head")]
        attempt("confusion_matrix", lambda: save_confusion_matrices(panels, out_dir / CONFUSION_FILE, title=title,
                                                                    class_names=class_names))
    if clusterings:
        # each clustering against its own number of clusters (a 42-cluster consensus is not drawn against K = 10)
        sizes = [(n, np.bincount(p.astype(np.int64), minlength=max(int(num_clusters), int(p.max()) + 1 if p.size
                                                                    else 0))) for n, p in clusterings]
        attempt("cluster_sizes", lambda: save_cluster_sizes(sizes, out_dir / SIZES_FILE, title=title))
    if results.get("diversity"):
        matrix = np.asarray(results["diversity"]["nmi_matrix"])
        attempt("nmi_matrix", lambda: save_nmi_heatmap(matrix, out_dir / NMI_FILE, title=title))
    if metrics_path is not None and Path(metrics_path).is_file():
        attempt("training_curves", lambda: save_training_curves(read_metrics(metrics_path), out_dir / CURVES_FILE,
                                                                 title=title))
    if tsne and "features" in predictions and main_pred is not None:
        def draw_tsne() -> Path:
            rows = np.asarray(predictions["feature_rows"])
            embedding = tsne_embedding(np.asarray(predictions["features"]), seed=seed)
            return save_tsne(embedding, main_pred[rows], labels[rows] if has_labels else None, out_dir / TSNE_FILE,
                             pred_name=main_name, title=title, class_names=class_names)

        attempt("tsne", draw_tsne)
    return written


def write_evaluation_plots(run_dir: Path, results: dict, predictions: dict, cfg, *, epoch: int, step: int,
                           final: bool, logger, class_names: list[str] | None = None) -> list[Path]:
    """The trainer's hook at the end of an evaluation: figures into the run directory, each sent to wandb through
    the run logger. t-SNE at the final evaluation (`plot_tsne: final`), every one (`every`) or never."""
    if not cfg.get("plots", True):
        return []
    try:
        mode = cfg.get("plot_tsne", "final")
        start = time.perf_counter()
        written = write_plots(run_dir, results, predictions, metrics_path=run_dir / "metrics.jsonl",
                              num_clusters=int(cfg.num_clusters), seed=int(cfg.seed),
                              tsne=mode == "every" or (mode == "final" and final), title=f"(epoch {epoch})",
                              warn=logger.warning,
                              on_written=lambda name, path: logger.log_image(f"eval/{name}", path, step=step),
                              class_names=class_names)
        seconds = time.perf_counter() - start
        if seconds > 5:
            logger.info(f"plots: {len(written)} figures in {seconds:.1f}s")
        return written
    except Exception as err:  # never let a figure stop training
        logger.warning(f"plots failed ({type(err).__name__}: {str(err)[:200]}); training continues")
        return []


# ----- DivClust sweep (scripts/divclust_sweep.py) -------------------------------------------------------------------
def save_divclust_sweep(rows: list[dict], path: Path, *, title: str = "") -> Path:
    """Three panels against the target D^T: measured D^R (with the diagonal), the mean single-clustering ACC / NMI,
    the consensus ACC / NMI (and the official SCCBG result where it differs); below, each run's C x C NMI matrix.
    rows: one dict per target with target, measured, heads_mean_acc, heads_mean_nmi, consensus_acc, consensus_nmi,
    consensus_official_acc (or None), nmi_matrix."""
    plt = _pyplot()
    rows = sorted(rows, key=lambda r: -r["target"])
    n = len(rows)
    fig = plt.figure(figsize=(max(11.0, 2.0 * n), 7.2))
    grid = fig.add_gridspec(2, max(3, n), height_ratios=[1.25, 1.0])
    targets = [r["target"] for r in rows]
    width = max(1, max(3, n) // 3)
    top = [fig.add_subplot(grid[0, i * width:(i + 1) * width]) for i in range(3)]
    ax = top[0]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="D^R = D^T")
    ax.plot(targets, [r["measured"] for r in rows], "o-", label="measured D^R")
    ax.set(xlabel="target D^T", ylabel="D^R (mean NMI between clusterings)", xlim=(min(targets) - 0.05, 1.02),
           ylim=(0, 1.02), title="diversity reached")
    ax.legend(fontsize=8)
    for ax, prefix, name in ((top[1], "heads_mean", "mean single clustering"), (top[2], "consensus", "consensus")):
        ax.plot(targets, [r[f"{prefix}_acc"] for r in rows], "o-", label="ACC")
        ax.plot(targets, [r[f"{prefix}_nmi"] for r in rows], "s-", label="NMI")
        if prefix == "consensus" and any(r.get("consensus_official_acc") is not None for r in rows):
            official = [(r["target"], r["consensus_official_acc"]) for r in rows
                        if r.get("consensus_official_acc") is not None]
            ax.plot(*zip(*official), "x", color="black", label="ACC, official SCCBG\n(more clusters than asked)")
        ax.set(xlabel="target D^T", ylim=(0, 1.02), title=name)
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    top[0].invert_xaxis()
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[1, i])
        matrix = np.asarray(r["nmi_matrix"], dtype=float)
        ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(matrix)))
        ax.set_yticks(range(len(matrix)))
        ax.tick_params(labelsize=6)
        ax.set_title(f"D^T {r['target']:g}: D^R {r['measured']:.2f}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
