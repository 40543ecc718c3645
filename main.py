"""Deep clustering entrypoint: `python main.py --preset NAME --key value ...` (default preset: cc_digits).

Under torchrun (`torchrun --nproc_per_node=N main.py ...`) the same command trains with DDP.
`main(argv)` does the same in-process and returns the content of results.json.

  --help            this text: methods, presets, datasets and every key with its default
  --list_presets    every preset with what it is
  --print_config    the resolved config of the rest of the command line, as YAML; nothing is run or written

Exit status: 0 done, 2 configuration error, 3 data error, 4 checkpoint error, 5 training diverged, 6 file error
(disk full, read-only folder), 130 interrupted (continue with --resume RUN_DIR). Every failure before training
starts leaves the output folder as it was.
"""
from __future__ import annotations

import signal
import sys
import textwrap


def _fail(kind: str, message: str) -> None:
    from termcolor import colored

    text = textwrap.fill(f"{kind}: {message}", width=110, break_long_words=False, break_on_hyphens=False)
    print(colored(text, "red"), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Resolve the config from argv and run; errors of the user's input raise, `cli()` turns them into messages."""
    from engine.run import run

    return run(argv=sys.argv[1:] if argv is None else argv)


def help_text() -> str:
    """Methods, presets, datasets, and every key with its default and one-line comment, by section."""
    from engine.config import CONFIG_DIR, available_presets, load_yaml, yaml_comments
    from engine.run import catalog

    cat = catalog()
    lines = [__doc__.strip(), "", "methods:      " + ", ".join(cat.choices["method"]),
             "datasets:     " + ", ".join(cat.choices["dataset"]()),
             "backbones:    " + ", ".join(cat.choices["backbone"]),
             "augmentation: " + ", ".join(cat.choices["augmentation"]),
             "presets:      " + ", ".join(available_presets()) + "  (--list_presets says what each is)", "",
             "common keys (configs/main_config.yaml), as --key value (default, meaning):"]
    main_file = CONFIG_DIR / "main_config.yaml"
    comments = yaml_comments(main_file)
    defaults = {k: v for k, v in load_yaml(main_file).items()}
    section = ""
    for line in main_file.read_text().splitlines():
        if line.startswith("# ---"):
            lines.append("  " + line.strip("# -").strip() + ":")
        elif line and not line[0].isspace() and not line.startswith("#") and ":" in line:
            section = line.split(":", 1)[0].strip()
            value = defaults.get(section)
            if not isinstance(value, dict) or section == "dataset_options":
                lines.append(f"    --{section} {value!r:<16} {comments.get(section, '')}")
        elif line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            key = line.split(":", 1)[0].strip()
            value = defaults.get(section, {}).get(key)
            lines.append(f"    --{section}.{key} {value!r:<16} {comments.get(f'{section}.{key}', '')}")
    for sec in cat.sections:
        lines += ["", f"{sec.title}; applies with --{sec.owner} {' / '.join(sec.owners)}:"]
        for name, key in sec.keys.items():
            lines.append(f"    --{sec.name}.{name} {key.default!r:<16} {key.help}")
    return "\n".join(lines)


def list_presets() -> str:
    from engine.config import CONFIG_DIR, available_presets, preset_summary

    names = available_presets()
    width = max(len(n) for n in names)
    return "\n".join(f"{name:<{width}}  {preset_summary(CONFIG_DIR / f'{name}.yaml')}" for name in names)


def _print(text: str) -> None:
    """Print to stdout; a reader that closes the pipe early (`| head`) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def cli(argv: list[str] | None = None) -> int:
    """main() with every expected failure turned into a message on stderr and an exit status (see --help)."""
    from datasets.registry import DatasetError, DatasetNotFoundError
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError
    from engine.trainer import TrainingDiverged

    from engine import distributed

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)   # a kill from a scheduler stops like Ctrl-C: a message, last.pt kept
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help") for a in args):
            _print(help_text())
            return 0
        if "--list_presets" in args:
            _print(list_presets())
            return 0
        if "--print_config" in args:
            from engine.config import to_yaml
            from engine.run import load_config

            _print(to_yaml(load_config([a for a in args if a != "--print_config"])).rstrip())
            return 0
        main(args)
        distributed.shutdown()  # torchrun: every rank leaves the process group together
    except ConfigError as err:
        _fail("configuration error", str(err))
        return 2
    except DatasetNotFoundError as err:
        _fail("dataset not found", str(err))
        return 3
    except DatasetError as err:
        _fail("data error", str(err))
        return 3
    except CheckpointError as err:
        _fail("checkpoint error", str(err))
        return 4
    except TrainingDiverged as err:
        _fail("training diverged", str(err))
        return 5
    except OSError as err:      # a full disk, a read-only folder: the writers name the path and what was kept
        _fail("file error", err.strerror if err.strerror and err.filename else str(err))
        return 6
    except KeyboardInterrupt:
        _fail("interrupted", "the last checkpoint written at an epoch end is intact (checkpoints/last.pt); continue "
                             "with --resume RUN_DIR.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
