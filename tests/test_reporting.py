"""Reporting: the seed-sweep script (scripts/reproduce.py), the run figures (engine/plots.py) and plot_run.py."""
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main as entry
from engine import plots
from engine.config import ConfigError
from engine.evaluate import feature_sample
from metrics import cluster_acc
from tests.conftest import TINY, killed_after_epoch

pytestmark = pytest.mark.plots  # these tests draw the figures for real

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--plots", "false"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script("reproduce")
plot_run = load_script("plot_run")


def sweep_argv(root, seeds, *extra, tag=None):
    argv = ["--preset", "cc_digits", "--seeds", *map(str, seeds), "--runs_root", str(root)]
    argv += ["--tag", tag] if tag else []
    return argv + ["--", *TINY, *QUIET, *extra]


def read_csv(path):
    with open(path, newline="") as f:
        return {(r["clustering"], r["metric"]): r for r in csv.DictReader(f)}


@pytest.fixture
def fast_tsne(monkeypatch):
    """scikit-learn's t-SNE costs seconds even on a few points (1000 iterations): tests that only need *an*
    embedding get the first two feature dimensions; the calls are recorded. The real t-SNE runs in
    test_tsne_label_panel_is_absent_without_labels."""
    calls = []

    def embed(features, *, seed):
        calls.append(len(features))
        return np.asarray(features, dtype=np.float32)[:, :2]

    monkeypatch.setattr(plots, "tsne_embedding", embed)
    return calls


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "runs"
    assert reproduce.main(sweep_argv(root, [0, 1], "--epochs", "1")) == 0
    return root


# ----- reproduce.py ------------------------------------------------------------------------------------------
def test_table_is_mean_and_sample_std_of_the_seeds(sweep):
    preset_dir = sweep / "cc_digits"
    results = [json.loads((preset_dir / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["config"] for r in results] == [str(preset_dir / f"seed{s}" / "config.yaml") for s in (0, 1)]
    rows = read_csv(preset_dir / "reproduce.csv")
    markdown = (preset_dir / "reproduce.md").read_text()
    for name, pick in (("head", lambda r: r["best_head"]), ("kmeans", lambda r: r["kmeans"])):
        for metric in ("acc", "nmi", "ari"):
            values = np.array([pick(r)[metric] for r in results])
            row = rows[(name, metric)]
            assert int(row["n"]) == 2
            assert float(row["mean"]) == pytest.approx(values.mean(), abs=1e-12)
            assert float(row["std"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert [float(row["seed_0"]), float(row["seed_1"])] == pytest.approx(values.tolist())
            assert f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" in markdown
    seconds = [r["seconds"] for r in results]
    assert float(rows[("run", "seconds")]["mean"]) == pytest.approx(np.mean(seconds))
    assert ("consensus", "acc") not in rows  # one clustering: no consensus row


def test_rerun_skips_finished_seeds(sweep, monkeypatch, capsys):
    stamps = {s: (sweep / "cc_digits" / f"seed{s}" / "results.json").stat().st_mtime_ns for s in (0, 1)}

    def must_not_train(argv):
        raise AssertionError(f"a finished seed was trained again: {argv}")

    monkeypatch.setattr(entry, "main", must_not_train)
    assert reproduce.main(sweep_argv(sweep, [0, 1], "--epochs", "1")) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    for s in (0, 1):
        assert (sweep / "cc_digits" / f"seed{s}" / "results.json").stat().st_mtime_ns == stamps[s]
    # aggregate-only with a seed that never ran: the table holds the two finished ones
    assert reproduce.main(["--preset", "cc_digits", "--seeds", "0", "1", "7", "--runs_root", str(sweep),
                           "--aggregate-only"]) == 0
    assert read_csv(sweep / "cc_digits" / "reproduce.csv")[("head", "acc")]["n"] == "2"


def test_a_finished_seed_with_another_config_stops_the_sweep(sweep, monkeypatch, capsys):
    monkeypatch.setattr(entry, "main", lambda argv: pytest.fail("must not run"))
    assert reproduce.main(sweep_argv(sweep, [0], "--epochs", "1", "--lr", "0.01")) == 2
    assert "lr (run: 0.001, sweep: 0.01)" in capsys.readouterr().err


def test_a_killed_seed_is_resumed(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    argv = sweep_argv(root, [3], "--epochs", "2")
    with killed_after_epoch(1):
        assert reproduce.main(argv) == 130
    run_dir = root / "cc_digits" / "seed3"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "results.json").exists()

    calls = []
    real_main = entry.main
    monkeypatch.setattr(entry, "main", lambda a: calls.append(a) or real_main(a))
    assert reproduce.main(argv) == 0
    assert len(calls) == 1 and calls[0][-2:] == ["--resume", str(run_dir)]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2
    trained = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if "train/epoch_seconds" in line]
    assert trained == [1, 2]  # epoch 1 was not trained again: the run continued from its checkpoint
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert "resumed (time after the resume only): seed 3" in (root / "cc_digits" / "reproduce.md").read_text()


def test_torchrun_seeds_run_as_subprocesses(tmp_path, monkeypatch):
    commands = []

    class Done:
        returncode = 0

    def fake_run(cmd, cwd):
        commands.append(cmd)
        run_dir = Path(cmd[cmd.index("--output_dir") + 1]) / "cc_digits" / cmd[cmd.index("--run_name") + 1]
        run_dir.mkdir(parents=True)
        seed = int(cmd[cmd.index("--seed") + 1])
        (run_dir / "results.json").write_text(json.dumps({"best_head": {"acc": 0.5 + seed / 10, "nmi": 0.4,
                                                                        "ari": 0.3, "index": 0}, "heads": [{}]}))
        return Done()

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    assert reproduce.main(["--preset", "cc_digits", "--seeds", "1", "2", "--runs_root", str(tmp_path),
                           "--tag", "ddp", "--torchrun", "2", "--", "--epochs", "1"]) == 0
    assert [c[c.index("--run_name") + 1] for c in commands] == ["ddp_seed1", "ddp_seed2"]
    assert all("--nproc_per_node=2" in c and c[c.index("--nproc_per_node=2") + 1].endswith("main.py")
               for c in commands)
    row = read_csv(tmp_path / "cc_digits" / "reproduce_ddp.csv")[("head", "acc")]
    assert float(row["mean"]) == pytest.approx(0.65) and float(row["std"]) == pytest.approx(np.std([0.6, 0.7], ddof=1))


def test_a_seed_killed_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    from engine.trainer import Trainer
    from tests.conftest import TINY

    extra = TINY + ["--epochs", "1", "--plots", "false"]
    original = Trainer.train_epoch

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        entry.main(["--preset", "cc_digits", *extra, "--seed", "4", "--output_dir", str(tmp_path),
                    "--run_name", "seed4"])
    run_dir = tmp_path / "cc_digits" / "seed4"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints" / "last.pt").exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert reproduce.main(["--preset", "cc_digits", "--seeds", "4", "--runs_root", str(tmp_path), "--", *extra]) == 0
    assert (run_dir / "results.json").is_file()
    assert "killed before its first epoch ended (no checkpoint): starting it again there" in (
        run_dir / "log.txt").read_text()


def test_bad_sweeps_are_refused(tmp_path, capsys):
    assert reproduce.main(["--preset", "cc_digitz", "--seeds", "0", "--runs_root", str(tmp_path)]) == 2
    assert "unknown preset 'cc_digitz'" in capsys.readouterr().err
    assert reproduce.main(["--preset", "cc_digits", "--seeds", "0", "--runs_root", str(tmp_path),
                           "--aggregate-only"]) == 1
    assert "no finished seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--preset", "cc_digits", "--seeds", "0", "--", "--run_name", "x"])


# ----- figures -----------------------------------------------------------------------------------------------
def test_confusion_matrix_puts_the_matched_counts_on_the_diagonal():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
    pred = np.array([7, 7, 3, 3, 3, 9, 9, 9, 7, 3])     # the -1 sample is ignored
    # contingency (rows classes 0,1,2; columns clusters 3,7,9): [[1,2,0],[2,0,0],[0,1,3]];
    # best one-to-one map: 0->7 (2), 1->3 (2), 2->9 (3) = 7 of 9 samples
    m = plots.hungarian_confusion(labels, pred)
    assert m.classes.tolist() == [0, 1, 2] and m.clusters.tolist() == [7, 3, 9] and m.matched == 3
    assert m.table.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert m.accuracy == pytest.approx(7 / 9) == cluster_acc(labels[:-1], pred[:-1])
    # more clusters than classes: unmatched clusters follow the matched ones
    m = plots.hungarian_confusion(np.array([0, 0, 0, 1, 1, 1]), np.array([4, 4, 2, 1, 1, 0]))
    assert m.clusters.tolist() == [4, 1, 0, 2] and m.table.tolist() == [[2, 0, 0, 1], [0, 2, 1, 0]]
    assert m.matched == 2 and m.accuracy == pytest.approx(4 / 6)


def test_tsne_label_panel_is_absent_without_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    embedding, pred = rng.normal(size=(40, 2)), rng.integers(0, 3, 40)
    assert len(plots.tsne_figure(embedding, pred, rng.integers(0, 3, 40)).axes) == 2
    assert len(plots.tsne_figure(embedding, pred, None).axes) == 1
    import matplotlib.pyplot as plt

    plt.close("all")
    n = 40
    features = np.concatenate([rng.normal(0, 1, (n // 2, 4)), rng.normal(8, 1, (n // 2, 4))]).astype(np.float16)
    real = plots.tsne_embedding(features, seed=0)          # the one real scikit-learn t-SNE of the suite
    first, second = real[: n // 2], real[n // 2:]
    assert real.shape == (n, 2) and np.isfinite(real).all()
    gap = np.linalg.norm(first.mean(0) - second.mean(0))
    assert gap > 2 * max(first.std(0).max(), second.std(0).max())   # two far-apart blobs stay apart
    monkeypatch.setattr(plots, "tsne_embedding", lambda f, seed: real)
    predictions = {"labels": np.full(n, -1), "assignments": (np.arange(n) >= n // 2)[None].astype(np.int64),
                   "feature_rows": np.arange(n), "features": features}
    written = plots.write_plots(tmp_path, {}, predictions, num_clusters=2, tsne=True, warn=pytest.fail)
    assert {p.name for p in written} == {"cluster_sizes.png", "tsne.png"}  # no labels: no confusion matrix
    with_labels = dict(predictions, labels=predictions["assignments"][0])
    (tmp_path / "l").mkdir()
    plots.write_plots(tmp_path / "l", {}, with_labels, tsne=True, warn=pytest.fail)
    width = plt.imread(tmp_path / "tsne.png").shape[1]
    assert plt.imread(tmp_path / "l" / "tsne.png").shape[1] == pytest.approx(2 * width, rel=0.02)
    assert (tmp_path / "l" / "confusion_matrix.png").is_file()


def test_feature_sample_is_seeded_and_exact_up_to_float16():
    features = torch.randn(500, 8)
    a, b = feature_sample(features, 100, seed=3), feature_sample(features, 100, seed=3)
    assert np.array_equal(a["feature_rows"], b["feature_rows"]) and len(np.unique(a["feature_rows"])) == 100
    assert np.all(np.diff(a["feature_rows"]) > 0) and a["features"].dtype == np.float16
    np.testing.assert_allclose(a["features"], features.numpy()[a["feature_rows"]], rtol=1e-3, atol=1e-3)
    assert not np.array_equal(feature_sample(features, 100, seed=4)["feature_rows"], a["feature_rows"])
    assert feature_sample(features, 0, seed=3) == {}
    assert len(feature_sample(features, 10_000, seed=3)["feature_rows"]) == 500


def test_trainer_writes_figures_with_tsne_only_at_the_final_evaluation(tiny_args, tmp_path, monkeypatch,
                                                                     fast_tsne):
    images = []
    from engine.logger import RunLogger

    monkeypatch.setattr(RunLogger, "log_image", lambda self, key, path, step: images.append((key, step)))
    entry.main(tiny_args + ["--epochs", "2", "--run_name", "p", "--clusterings", "2", "--consensus", "coassoc",
                            "--plot_tsne_points", "150"])
    run_dir = tmp_path / "runs" / "cc_digits" / "p"
    for name in ("confusion_matrix", "cluster_sizes", "nmi_matrix", "training_curves", "tsne"):
        assert (run_dir / f"{name}.png").stat().st_size > 1000, name
    assert fast_tsne == [150]
    keys = [k for k, _ in images]
    assert keys.count("eval/confusion_matrix") == 2 and keys.count("eval/tsne") == 1
    with np.load(run_dir / "predictions.npz") as preds:
        assert preds["features"].shape[0] == 150 and preds["feature_rows"].max() < 1797


def test_a_failing_figure_never_stops_the_run(tiny_args, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(plots, "save_cluster_sizes", broken)
    out = entry.main(tiny_args + ["--epochs", "1", "--run_name", "f", "--plot_tsne", "never"])
    run_dir = tmp_path / "runs" / "cc_digits" / "f"
    assert out["heads"] and (run_dir / "results.json").is_file()
    assert "plot cluster_sizes failed (RuntimeError: no ink)" in (run_dir / "log.txt").read_text()
    assert (run_dir / "confusion_matrix.png").is_file() and not (run_dir / "cluster_sizes.png").exists()
    assert not (run_dir / "tsne.png").exists()


def test_plots_can_be_switched_off_and_bad_values_are_refused(sweep, tiny_args, tmp_path):
    seed_dir = sweep / "cc_digits" / "seed0"            # trained with --plots false
    assert (seed_dir / "predictions.npz").is_file() and not list(seed_dir.glob("*.png"))
    with pytest.raises(ConfigError, match="plot_tsne = .sometimes.: must be one of final, every, never"):
        entry.main(tiny_args + ["--epochs", "1", "--run_name", "bad", "--plot_tsne", "sometimes"])
    assert not (tmp_path / "runs" / "cc_digits" / "bad").exists()


def test_plot_run_regenerates_the_figures(tiny_args, tmp_path, capsys, fast_tsne):
    entry.main(tiny_args + QUIET + ["--epochs", "1", "--run_name", "r", "--clusterings", "2", "--consensus",
                                    "coassoc", "--plot_tsne_points", "120"])
    run_dir = tmp_path / "runs" / "cc_digits" / "r"
    assert not list(run_dir.glob("*.png"))
    assert plot_run.main([str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    expected = {"confusion_matrix.png", "cluster_sizes.png", "nmi_matrix.png", "training_curves.png", "tsne.png"}
    assert {p.name for p in (tmp_path / "figs").glob("*.png")} == expected
    import matplotlib.pyplot as plt

    for name in expected:
        assert plt.imread(tmp_path / "figs" / name).shape[0] > 100
    assert fast_tsne == [120]
    assert plot_run.main([str(run_dir), "--no-tsne"]) == 0
    assert {p.name for p in run_dir.glob("*.png")} == expected - {"tsne.png"}
    assert plot_run.main([str(tmp_path / "nothing")]) == 1
    assert "no predictions.npz" in capsys.readouterr().err
