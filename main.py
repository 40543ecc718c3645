"""Deep clustering entrypoint: `python main.py --preset NAME --key value ...` (default preset: cc_digits).

Under torchrun (`torchrun --nproc_per_node=N main.py ...`) the same command trains with DDP.
`main(argv)` does the same in-process and returns the content of results.json.
"""
from __future__ import annotations

import sys
import textwrap


def _fail(kind: str, message: str) -> None:
    from termcolor import colored

    text = textwrap.fill(f"{kind}: {message}", width=110, break_long_words=False, break_on_hyphens=False)
    print(colored(text, "red"), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Resolve the config from argv and run; errors of the user's input raise, `cli()` turns them into messages."""
    from engine.config import resolve
    from engine.plots import check_plot_config
    from engine.trainer import run

    cfg = resolve(sys.argv[1:] if argv is None else argv)
    check_plot_config(cfg)
    return run(cfg)


def cli() -> int:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip() + "\nEvery key, with its default and meaning: configs/main_config.yaml.")
        return 0
    from datasets.registry import DatasetNotFoundError
    from engine.checkpoint import CheckpointError
    from engine.config import ConfigError
    from engine.trainer import TrainingDiverged

    from engine import distributed

    try:
        main()
        distributed.shutdown()  # torchrun: every rank leaves the process group together
    except ConfigError as err:
        _fail("configuration error", str(err))
        return 2
    except DatasetNotFoundError as err:
        _fail("dataset not found", str(err))
        return 3
    except CheckpointError as err:
        _fail("checkpoint error", str(err))
        return 4
    except TrainingDiverged as err:
        _fail("training diverged", str(err))
        return 5
    except KeyboardInterrupt:
        _fail("interrupted", "the last checkpoint written at an epoch end is intact (checkpoints/last.pt).")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
