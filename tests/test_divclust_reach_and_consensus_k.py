"""DivClust delivers the diversity asked for: the lowest reachable threshold and the warning when the target is out of
reach (hand-checked numbers), results.json's divclust summary, and the consensus that returns the requested number
of clusters."""
import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import main as entry
from consensus import sccbg
from consensus.restore import restore_cluster_count
from consensus.synthetic import planted_ensemble
from metrics import evaluate_clustering
from engine.divclust import interval_to_reach, lowest_threshold
from engine.run import divclust_reach_warning, load_config as resolve
from tests.conftest import TINY


def test_lowest_threshold_counts_the_updates_of_the_run():
    # updates at steps 0, 20, ..., 680: 35 of them in 700 steps
    assert lowest_threshold(700, 20, 0.99) == pytest.approx(0.99 ** 35)
    assert lowest_threshold(700, 5, 0.99) == pytest.approx(0.99 ** 140)
    assert lowest_threshold(1, 20, 0.99) == pytest.approx(0.99)     # the update at step 0
    assert lowest_threshold(0, 20, 0.99) == 1.0
    assert lowest_threshold(21, 20, 0.9, start=0.5) == pytest.approx(0.5 * 0.9 ** 2)


def test_interval_to_reach_is_the_largest_that_reaches():
    # 0.6 needs ceil(log 0.6 / log 0.99) = 51 updates; in 350 steps: interval 349 // 50 = 6
    assert interval_to_reach(0.6, 350, 0.99) == 6
    assert lowest_threshold(350, 6, 0.99) <= 0.6 < lowest_threshold(350, 7, 0.99)
    assert interval_to_reach(0.5, 10, 0.99) == 0                    # 69 updates needed, 10 steps
    assert interval_to_reach(1.0, 10, 0.99) == 10                   # nothing to reach
    assert interval_to_reach(0.99, 10, 0.99) == 10                  # one update, at step 0


def test_the_warning_names_the_numbers_and_appears_only_when_the_target_is_out_of_reach():
    # 700 steps (the default preset's length) with the official interval of 20 (the preset's own is 5).
    cfg = resolve(["--clusterings", "3", "--NMI_target", "0.6", "--NMI_interval", "20"])
    message = divclust_reach_warning(cfg, 700)
    assert message is not None
    assert "700 steps" in message and "NMI_interval 20" in message and f"{0.99 ** 35:.3f}" in message
    assert "--NMI_interval 6 reaches it by the middle of the run" in message
    assert divclust_reach_warning(resolve(["--clusterings", "3", "--NMI_target", "0.6", "--NMI_interval", "5"]),
                                  700) is None
    assert divclust_reach_warning(resolve(["--clusterings", "3"]), 700) is None          # target 1: DivClust off
    assert divclust_reach_warning(resolve(["--NMI_target", "0.6"]), 700) is None         # one clustering
    assert "no NMI_interval reaches it" in divclust_reach_warning(cfg, 10)


@pytest.mark.parametrize("preset, steps", [("cc_digits", 100 * 7), ("pica_digits", 60 * 7),
                                           ("cc_fashion_mnist", 20 * 50), ("pica_fashion_mnist", 20 * 50),
                                           ("iic_digits", 72 * 28), ("iic_fashion_mnist", 24 * 100)])
def test_the_cpu_presets_reach_the_lowest_sweep_target_within_the_run(preset, steps):
    # steps: epochs x steps per epoch (digits: 1797 images in batches of 256, or of 64 for IIC).
    cfg = resolve(["--preset", preset, "--clusterings", "3", "--NMI_target", "0.5"])
    assert divclust_reach_warning(cfg, steps) is None
    assert lowest_threshold(steps, int(cfg.NMI_interval), float(cfg.threshold_rate)) <= 0.5
    official = resolve(["--preset", preset, "--clusterings", "3", "--NMI_target", "0.5", "--NMI_interval", "20"])
    # The longer IIC presets reach 0.5 with the official interval and keep it; the others need their own.
    assert (divclust_reach_warning(official, steps) is None) == preset.startswith("iic")


@pytest.mark.parametrize("target, warned", [(0.95, False), (0.5, True)])
def test_a_run_warns_in_its_log_and_records_target_threshold_and_measured_diversity(tmp_path, target, warned):
    # 2 epochs x 3 steps, NMI_interval 1: the threshold can fall to 0.99^6 = 0.941
    args = ["--output_dir", str(tmp_path), "--run_name", "r", *TINY, "--epochs", "2", "--clusterings", "3",
            "--NMI_target", str(target), "--NMI_interval", "1", "--consensus", "none", "--plots", "false"]
    results = entry.main(args)
    log = (tmp_path / "cc_digits/r/log.txt").read_text()
    assert ("the measured diversity cannot reach the target" in log) is warned
    summary = results["divclust"]
    assert summary["target"] == target and summary["NMI_interval"] == 1
    assert summary["lowest_reachable_threshold"] == pytest.approx(0.99 ** 6)
    assert summary["measured"] == results["diversity"]["nmi_mean"]
    assert results["diversity"]["target"] == target
    assert results["diversity"]["threshold"] == summary["threshold"]
    evals = [json.loads(line)["metrics"] for line in (tmp_path / "cc_digits/r/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/diversity.nmi_mean" in r]
    assert len(evals) == 2 and all("eval/diversity.threshold" in r and r["eval/diversity.target"] == target
                                   for r in evals)
    assert f"(target D^T {target:g}, threshold now" in log


def test_restoring_the_count_moves_each_stray_point_to_the_cluster_it_agrees_with_most():
    base = np.array([[0, 0, 0, 1, 1, 1, 2, 2],
                     [0, 0, 0, 1, 1, 1, 1, 2]])
    official = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    # point 6 shares clustering 2's cluster 1 with points 3-5 (agreement 1 vs 0); point 7 agrees with nobody:
    # the tie goes to the first of the equally large kept clusters
    assert restore_cluster_count(official, base, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 0]


def test_restored_sccbg_has_exactly_k_clusters_and_a_higher_accuracy():
    # 4 noisy copies (40 % of the points moved at random) of 5 planted clusters: SCCBG leaves 42 components
    truth, labels = planted_ensemble(500, 5, 4, noise=0.4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        official = sccbg(labels, 5)
    sizes = np.bincount(official)
    assert len(sizes) == 42
    restored = restore_cluster_count(official, labels, 5)
    assert sorted(np.unique(restored).tolist()) == [0, 1, 2, 3, 4]
    kept = np.isin(official, np.argsort(-sizes)[:5])
    # the five largest components keep their points (renumbered), the rest are moved
    assert adjusted_rand_score(official[kept], restored[kept]) == 1.0
    # measured: ACC 0.828 -> 0.854 (the moved points are the ones with the noisiest base labels)
    assert evaluate_clustering(truth, restored)["acc"] > evaluate_clustering(truth, official)["acc"] + 0.02


def test_a_consensus_with_k_clusters_is_returned_unchanged():
    truth, labels = planted_ensemble(300, 4, 8, noise=0.1, seed=1)
    official = sccbg(labels, 4)
    assert len(np.unique(official)) == 4
    np.testing.assert_array_equal(restore_cluster_count(official, labels, 4), official)


def test_evaluation_reports_the_restored_and_the_official_consensus(tmp_path):
    def run(name, *extra):
        return entry.main(["--output_dir", str(tmp_path), "--run_name", name, *TINY, "--epochs", "1",
                           "--clusterings", "3", "--plots", "false", *extra])

    restored, official = run("on"), run("off", "--consensus_restore_k", "false")
    counts = restored["consensus_clusters"]
    assert counts["requested"] == 10 and counts["found"] > 10 and counts["restored"] == 10
    assert restored["consensus_official"] == official["consensus"]        # the official result, kept
    assert "consensus_official" not in official or official["consensus_official"] is None
    header = (tmp_path / "cc_digits/on/predictions.csv").read_text().splitlines()[0].split(",")
    assert "consensus" in header and "consensus_official" in header
    consensus_column = header.index("consensus")
    rows = (tmp_path / "cc_digits/on/predictions.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[consensus_column] for r in rows}) == 10


def test_the_sweep_script_writes_its_figure_and_table_and_resumes(tmp_path, capsys):
    import csv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import divclust_sweep

    argv = ["--preset", "cc_digits", "--clusterings", "2", "--targets", "1.0", "0.7", "--runs_root", str(tmp_path),
            "--", *TINY, "--epochs", "1", "--NMI_interval", "1"]
    assert divclust_sweep.sweep(argv) == 0
    figure = tmp_path / "cc_digits/divclust2_sweep.png"
    assert figure.is_file() and figure.stat().st_size > 10_000
    rows = list(csv.DictReader(open(figure.with_suffix(".csv"))))
    assert [float(r["target"]) for r in rows] == [1.0, 0.7]
    assert all(0 <= float(r["measured"]) <= 1 and r["consensus_acc"] for r in rows)
    first = figure.stat().st_mtime_ns
    assert divclust_sweep.sweep(argv) == 0                          # both runs are reused, the figure redrawn
    assert "finished earlier, skipped" in capsys.readouterr().out and figure.stat().st_mtime_ns >= first
    with pytest.raises(SystemExit):                                   # one clustering has no diversity to sweep
        divclust_sweep.sweep(["--preset", "cc_digits", "--clusterings", "1"])
