#!/usr/bin/env python3
"""Run a preset once per seed and report mean ± std of ACC / NMI / ARI over the seeds.

Usage:
    python scripts/reproduce.py --preset P --seeds 0 1 2 [--runs_root runs] [--tag NAME] [--torchrun N]
                                [--out PATH] [--aggregate-only] [-- extra main.py arguments]

Each seed s runs as `main.py --preset P --seed s --run_name seed<s>` (`<tag>_seed<s>` with --tag) into
<runs_root>/<preset>/seed<s>/, one after the other: in this process, or with --torchrun N as
`torchrun --standalone --nproc_per_node N main.py ...` subprocesses. Arguments after `--` go to every run
(e.g. `-- --epochs 50 --device cuda`).

A sweep resumes where it stopped: a seed whose run directory holds results.json is skipped and its numbers reused;
one with checkpoints/last.pt but no results.json is continued with `--resume`; a directory with neither (killed
before its first checkpoint) starts again in place. A finished or resumed run whose config.yaml differs from what
this sweep asks for stops the sweep (use another --tag).

The report, rewritten after every seed, goes to <runs_root>/<preset>/reproduce.md and reproduce.csv (with --tag:
reproduce_<tag>.md / .csv; --out PATH.md sets the markdown path, the CSV goes next to it). `--aggregate-only`
writes the report from the seed directories that exist, running nothing.
Exit status: 0 all seeds finished; 1 some seed failed or none finished; 2 bad arguments or configuration;
3 dataset missing; 4 unusable checkpoint; 130 interrupted (run the same command again to resume).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.registry import DatasetError, DatasetNotFoundError  # noqa: E402
from engine import report  # noqa: E402
from engine.checkpoint import CheckpointError  # noqa: E402
from engine.config import ConfigError, differences, load_yaml  # noqa: E402
from engine.run import NEUTRAL_KEYS, load_config  # noqa: E402

# main.py options this script sets itself: an extra argument naming one of them is refused.
OWN_KEYS = {"preset", "seed", "run_name", "output_dir", "resume", "eval_only", "config"}


def say(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the main.py arguments after `--`)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def extra_keys(extra: list[str]) -> list[str]:
    """The config keys that the main.py arguments set (`--key value` or `--key=value`)."""
    return [a[2:].partition("=")[0] for a in extra if a.startswith("--")]


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = split_extra(argv)
    parser = script_parser("reproduce.py", __doc__)
    parser.add_argument("--preset", required=True, help="preset name (configs/<preset>.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    parser.add_argument("--runs_root", default="runs", help="output_dir of the runs (default runs)")
    parser.add_argument("--tag", default="", help="run names <tag>_seed<s> instead of seed<s>")
    parser.add_argument("--torchrun", type=int, default=0, metavar="N",
                        help="run each seed as torchrun --standalone --nproc_per_node N main.py ... (0: in-process)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report path (CSV next to it)")
    parser.add_argument("--aggregate-only", dest="aggregate_only", action="store_true",
                        help="only aggregate the existing seed directories")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has repeated values: {args.seeds}")
    if args.torchrun < 0:
        parser.error("--torchrun N needs N >= 1 (or 0 for in-process runs)")
    if args.tag and any(c in args.tag for c in "/\\ "):
        parser.error("--tag must be a plain name (no slashes or spaces)")
    for key in extra_keys(extra):
        if key in OWN_KEYS:
            parser.error(f"--{key} is set by reproduce.py for every seed; remove it from the arguments after --")
    return args, extra


def run_name(tag: str, seed: int) -> str:
    return f"{tag}_seed{seed}" if tag else f"seed{seed}"


def main_argv(args: argparse.Namespace, extra: list[str], seed: int) -> list[str]:
    return (["--preset", args.preset] + extra
            + ["--seed", str(seed), "--output_dir", str(args.runs_root), "--run_name", run_name(args.tag, seed)])


def config_differences(saved_file: Path, wanted) -> list[str]:
    """Keys whose value in a run's config.yaml (read as the framework reads it) differs from the sweep's config."""
    saved = load_config(["--config", str(saved_file)])
    return [f"{k} (run: {a!r}, sweep: {b!r})" for k, (a, b) in differences(saved, wanted).items()
            if k not in NEUTRAL_KEYS]


def _run_in_process(argv: list[str]) -> dict:
    import main as entry

    return entry.main(argv)


def _run_torchrun(argv: list[str], nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "main.py")] + argv
    say("running: " + shlex.join(cmd))
    code = subprocess.run(cmd, cwd=str(ROOT)).returncode
    if code:
        raise SeedFailed(code)


class SeedFailed(RuntimeError):
    def __init__(self, code: int):
        super().__init__(f"exit status {code}")
        self.code = code


def report_paths(args: argparse.Namespace, preset_dir: Path) -> tuple[Path, Path]:
    if args.out is not None:
        md = Path(args.out)
        md = md.with_suffix(".md") if md.suffix in (".md", ".csv") else md.with_name(md.name + ".md")
    else:
        md = preset_dir / (f"reproduce_{args.tag}.md" if args.tag else "reproduce.md")
    return md, md.with_suffix(".csv")


def reproduce(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    try:  # validates the preset and every extra argument before any work
        configs = {s: load_config(main_argv(args, extra, s)) for s in args.seeds}
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    preset = configs[args.seeds[0]].preset
    preset_dir = Path(args.runs_root) / preset
    md_path, csv_path = report_paths(args, preset_dir)
    command = "python scripts/reproduce.py " + shlex.join(argv)
    runs = [report.SeedRun(s, preset_dir / run_name(args.tag, s), "missing") for s in args.seeds]
    say(f"{preset}: {len(runs)} seed(s) in {preset_dir}/{args.tag + '_' if args.tag else ''}seed<s>"
        + (" (aggregate only)" if args.aggregate_only else "")
        + (f", torchrun x{args.torchrun}" if args.torchrun else ""))

    def write() -> None:
        report.write_report(md_path, csv_path, preset, runs, command=command)

    failed = 0
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] seed {run.seed}:"
        results = report.read_results(run.run_dir)
        checkpoint = run.run_dir / "checkpoints" / "last.pt"
        saved_cfg = run.run_dir / "config.yaml"
        if saved_cfg.is_file() and (results is not None or checkpoint.is_file()):
            run.resumed = bool(load_yaml(saved_cfg).get("resume"))
            if not args.aggregate_only:
                diff = config_differences(saved_cfg, configs[run.seed])
                if diff:
                    print(f"configuration error: {run.run_dir} was made with another configuration than this sweep "
                          f"asks for: {'; '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Use another --tag "
                          f"(or --runs_root) for a different configuration, or remove that run directory.",
                          file=sys.stderr)
                    return 2
        if results is not None:
            run.status, run.results = "finished earlier", results
            say(f"{head} finished earlier, skipped ({_summary(results)})")
            continue
        if args.aggregate_only:
            run.status = "incomplete" if run.run_dir.exists() else "missing"
            say(f"{head} {run.status} ({run.run_dir}), not aggregated")
            continue
        seed_argv = main_argv(args, extra, run.seed)
        if checkpoint.is_file():
            run.status, run.resumed = "resumed", True
            seed_argv += ["--resume", str(run.run_dir)]
            say(f"{head} resuming {run.run_dir} from checkpoints/last.pt")
        else:
            run.status = "started"
            if run.run_dir.exists() and any(run.run_dir.iterdir()):
                say(f"{head} {run.run_dir} holds no checkpoint (killed before its first epoch ended); starting it "
                    f"again there")
            else:
                say(f"{head} starting {run.run_dir}")
        start = time.perf_counter()
        try:
            if args.torchrun:
                _run_torchrun(seed_argv, args.torchrun)
            else:
                _run_in_process(seed_argv)
        except KeyboardInterrupt:
            run.status = "interrupted"
            write()
            say(f"{head} interrupted; run the same command again to resume the sweep")
            return 130
        except SeedFailed as err:
            if err.code in (2, 3, 4):  # the same configuration, data or checkpoint problem would stop every seed
                write()
                say(f"{head} failed ({err}); the sweep stops: fix the problem above and run it again")
                return err.code
            run.status, run.note = "failed", str(err)
            failed += 1
            say(f"{head} failed ({err}); continuing with the next seed")
            continue
        except (ConfigError, DatasetNotFoundError, DatasetError, CheckpointError) as err:
            # the same configuration, data or checkpoint problem would stop every seed
            write()
            print(f"{type(err).__name__}: {err}", file=sys.stderr)
            say(f"{head} failed; the sweep stops: fix the problem above and run it again")
            return 2 if isinstance(err, ConfigError) else 4 if isinstance(err, CheckpointError) else 3
        except Exception as err:  # e.g. TrainingDiverged: this seed failed, the others may not
            name = type(err).__name__
            run.status, run.note = "failed", f"{name}: {str(err)[:120]}"
            failed += 1
            say(f"{head} failed ({run.note}); continuing with the next seed")
            continue
        run.results = report.read_results(run.run_dir)
        if run.results is None:
            run.status, run.note = "failed", "no results.json written"
            failed += 1
            say(f"{head} finished without results.json in {run.run_dir}")
            continue
        say(f"{head} done in {time.perf_counter() - start:.1f}s ({_summary(run.results)})")
        write()

    finished = [r for r in runs if r.results is not None]
    if not finished:
        print(f"error: no finished seed to aggregate: none of {', '.join(str(r.run_dir) for r in runs)} holds "
              f"results.json" + ("" if args.aggregate_only else " (every seed failed)"), file=sys.stderr)
        return 1
    write()
    say(f"report of {len(finished)}/{len(runs)} seeds: {md_path} and {csv_path}")
    print(md_path.read_text().split("\n## Per seed")[0].rstrip(), flush=True)
    return 1 if failed else 0


def _summary(results: dict) -> str:
    parts = []
    for name, metrics in (("head", report.reported_head(results)), ("consensus", results.get("consensus")),
                          ("k-means", results.get("kmeans"))):
        if metrics:
            parts.append(f"{name} ACC {metrics['acc']:.4f} NMI {metrics['nmi']:.4f} ARI {metrics['ari']:.4f}")
    return "; ".join(parts) or "no labelled metrics"


def main(argv: list[str] | None = None) -> int:
    return reproduce(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
