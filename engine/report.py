"""Aggregate the finished runs of a seed sweep (their results.json) into mean ± sample std tables.

Used by `scripts/reproduce.py`. Rows (clustering, metric), in order: the reported head (the label-free selected
head where the method selects one, else results.json's best_head, which with C > 1 is the best by ACC and so uses
labels), the mean over heads (C > 1), consensus, k-means and GMM on the features, the measured diversity D^R, and
the run's wall time (results.json `seconds`: training + evaluations of the run's last session, so a resumed run
counts only the time after its resume). Std is the sample standard deviation (ddof = 1); undefined for n = 1.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

CLUSTERINGS = ("head", "heads_mean", "consensus", "consensus_official", "kmeans", "gmm")
LABELS = {"head": "head", "heads_mean": "mean over heads", "consensus": "consensus",
          "consensus_official": "consensus, official SCCBG (more clusters than asked)", "kmeans": "k-means on features",
          "gmm": "GMM on features", "diversity": "D^R (mean NMI between clusterings)", "run": "wall time (s)"}
METRICS = ("acc", "nmi", "ari")


@dataclass
class SeedRun:
    """One seed of a sweep: where it lives, what happened to it, and its results.json once finished."""

    seed: int
    run_dir: Path
    status: str                    # finished earlier, resumed, started, failed, incomplete, missing
    results: dict | None = None
    note: str = ""
    resumed: bool = False          # the run was continued from a checkpoint (its `seconds` cover the last session)


@dataclass
class Row:
    clustering: str
    metric: str
    values: dict[int, float] = field(default_factory=dict)   # seed -> value

    @property
    def stats(self) -> tuple[float, float, int]:
        return mean_std(list(self.values.values()))


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof 1 (nan for n < 2), n)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def reported_head(results: dict) -> dict | None:
    """The head results.json reports: selected_head (label-free choice) if present, else best_head."""
    return results.get("selected_head") or results.get("best_head")


def head_kind(results: dict) -> str:
    if results.get("selected_head"):
        return "selected head (label-free choice)"
    if len(results.get("heads") or []) > 1:
        return "best head by ACC (uses labels)"
    return "head"


def seed_values(results: dict) -> dict[tuple[str, str], float]:
    """{(clustering, metric): value} of one results.json."""
    out: dict[tuple[str, str], float] = {}
    sources = {"head": reported_head(results),
               "heads_mean": results.get("heads_mean") if len(results.get("heads") or []) > 1 else None,
               **{name: results.get(name) for name in ("consensus", "consensus_official", "kmeans", "gmm")}}
    for name, metrics in sources.items():
        for metric in METRICS:
            if metrics and metrics.get(metric) is not None:
                out[(name, metric)] = float(metrics[metric])
    if results.get("diversity"):
        out[("diversity", "nmi_mean")] = float(results["diversity"]["nmi_mean"])
    if results.get("seconds") is not None:
        out[("run", "seconds")] = float(results["seconds"])
    if results.get("cpu_seconds") is not None:
        out[("run", "cpu_seconds")] = float(results["cpu_seconds"])
    return out


def aggregate(runs: list[SeedRun]) -> list[Row]:
    """One Row per (clustering, metric) present in any finished run, in the fixed order of the table."""
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        if run.results is None:
            continue
        for key, value in seed_values(run.results).items():
            rows.setdefault(key, Row(*key)).values[run.seed] = value
    order = [(c, m) for c in CLUSTERINGS for m in METRICS] + [("diversity", "nmi_mean"), ("run", "seconds"),
                                                                 ("run", "cpu_seconds")]
    return [rows[key] for key in order if key in rows]


def _cell(row: Row | None, digits: int = 4) -> str:
    if row is None:
        return ""
    mean, std, n = row.stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f} ± –"


def markdown(preset: str, runs: list[SeedRun], rows: list[Row], *, command: str = "") -> str:
    """The reproduction report: aggregate table, diversity and wall time, and one line per seed."""
    finished = [r for r in runs if r.results is not None]
    by_key = {(r.clustering, r.metric): r for r in rows}
    kinds = sorted({head_kind(r.results) for r in finished})
    lines = [f"# Reproduction: `{preset}`", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"Seeds {', '.join(str(r.seed) for r in runs)}: {len(finished)} finished. Mean ± sample standard "
              f"deviation (n - 1) over the finished seeds; n is the number of seeds in each row. Metric values are "
              f"fractions.", ""]
    lines += ["| clustering | ACC | NMI | ARI | n |", "|---|---|---|---|---|"]
    for name in CLUSTERINGS:
        cells = [by_key.get((name, m)) for m in METRICS]
        if any(cells):
            n = max(c.stats[2] for c in cells if c)
            label = " / ".join(kinds) if name == "head" and kinds else LABELS[name]
            lines.append(f"| {label} | " + " | ".join(_cell(c) for c in cells) + f" | {n} |")
    lines.append("")
    if ("diversity", "nmi_mean") in by_key:
        row = by_key[("diversity", "nmi_mean")]
        lines.append(f"{LABELS['diversity']}: {_cell(row)} (n = {row.stats[2]})  ")
    if ("run", "seconds") in by_key:
        row = by_key[("run", "seconds")]
        resumed = [str(r.seed) for r in finished if r.resumed]
        lines.append(f"Wall time per seed: {_cell(row, 1)} s (n = {row.stats[2]}; results.json `seconds`, training "
                     f"and evaluations" + (f"; resumed (time after the resume only): seed {', '.join(resumed)}"
                                           if resumed else "") + ")  ")
    if ("run", "cpu_seconds") in by_key:
        row = by_key[("run", "cpu_seconds")]
        lines.append(f"CPU time per seed: {_cell(row, 1)} s (n = {row.stats[2]}; results.json `cpu_seconds`, the "
                     f"process's user + system time over all its threads)")
    lines += ["", "## Per seed", "",
              "| seed | run directory | status | head ACC / NMI / ARI | consensus | k-means | seconds |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        res = run.results or {}

        def triple(metrics: dict | None) -> str:
            return " / ".join(f"{metrics[m]:.4f}" for m in METRICS) if metrics else "–"

        seconds = f"{res['seconds']:.1f}" if res.get("seconds") is not None else "–"
        status = run.status + (f" ({run.note})" if run.note else "")
        lines.append(f"| {run.seed} | `{run.run_dir}` | {status} | {triple(reported_head(res))} | "
                     f"{triple(res.get('consensus'))} | {triple(res.get('kmeans'))} | {seconds} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: list[SeedRun], rows: list[Row]) -> None:
    """clustering, metric, n, mean, std, then one column per seed (empty where that seed has no value)."""
    seeds = [r.seed for r in runs]
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clustering", "metric", "n", "mean", "std"] + [f"seed_{s}" for s in seeds])
        for row in rows:
            mean, std, n = row.stats
            writer.writerow([row.clustering, row.metric, n, repr(mean), "" if math.isnan(std) else repr(std)]
                            + [repr(row.values[s]) if s in row.values else "" for s in seeds])
    tmp.replace(path)


def write_report(md_path: Path, csv_path: Path, preset: str, runs: list[SeedRun], *, command: str = "") -> list[Row]:
    """Aggregate `runs` and write the markdown report and the CSV (both atomically); returns the rows."""
    rows = aggregate(runs)
    md_path, csv_path = Path(md_path), Path(csv_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown(preset, runs, rows, command=command))
    tmp.replace(md_path)
    write_csv(csv_path, runs, rows)
    return rows


def label_informed_best(metrics_path: Path) -> dict | None:
    """The evaluation with the highest ACC of any head over the run's evaluations (metrics.jsonl), as the official
    PICA and IIC code keeps its best-accuracy checkpoint: {"epoch", "head", "acc", "nmi", "ari"}. It is chosen with
    the labels, so it is an analysis number, never the result. None without evaluations of heads."""
    path = Path(metrics_path)
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        metrics = record.get("metrics") or {}
        heads = sorted({k[len("eval/heads/"):].split(".")[0] for k in metrics if k.startswith("eval/heads/")}, key=int)
        # (metric prefix, head index): every head, or the run's one head when only eval/head is logged
        candidates = [(f"eval/heads/{h}", int(h)) for h in heads] or [("eval/head", 0)]
        for prefix, head in candidates:
            acc = metrics.get(f"{prefix}.acc")
            if acc is not None and (best is None or acc > best["acc"]):
                best = {"epoch": record.get("epoch"), "head": head, "acc": acc,
                        "nmi": metrics.get(f"{prefix}.nmi"), "ari": metrics.get(f"{prefix}.ari")}
    return best


def read_results(run_dir: Path) -> dict | None:
    """results.json of a finished run, or None when the run has not finished (or the file is unreadable)."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
