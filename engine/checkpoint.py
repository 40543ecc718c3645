"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`.

A checkpoint holds only tensors and plain containers, so loading never unpickles arbitrary objects; a file that
needs more is refused. Model weights load strictly: a DDP `module.` prefix is removed (and said so), any other
missing or unexpected key is an error that names the keys.
"""
from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends (their own handlers, re-raised),
    so a checkpoint write is never cut off in the middle (which would stop the run with a zip-writer error
    instead of the interrupt). Only the main thread can hold signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in held}
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`; an interrupt that
    arrives meanwhile acts once the file is in place."""
    with signals_held():
        _save_atomic(obj, Path(path))


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
            raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); {kept} and the temporary file "
                                     f"was removed", str(path)) from None
        raise


def remove_orphans(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files (`.<name>.*.tmp`) that a write interrupted by a kill left in `folder`; returns
    their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for orphan in sorted(folder.glob(".*.tmp")):
        if orphan.is_file():
            orphan.unlink()
            removed.append(orphan.name)
    return removed


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely; raises CheckpointError with a clear reason."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without checkpoints/last.pt; pass the checkpoint file.")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors and plain containers, and "
            f"loading those would run arbitrary code (torch.load weights_only=True). Details: {str(err)[:300]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err)[:200]}).") from None
    if not isinstance(obj, dict) or "model" not in obj or obj.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a checkpoint written by this framework (no 'model'/'format' entry).")
    return obj


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], *, log=print) -> None:
    """Strict load; strips a DDP `module.` prefix, and reports any other mismatch by name."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        log("checkpoint: removed the DDP 'module.' prefix from the saved weights")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            "checkpoint weights do not match the model (different method, backbone, clusterings or K?). "
            f"Missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}."
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint tensors have other shapes for: {wrong[:8]} "
                              f"(e.g. {wrong[0]}: saved {tuple(state[wrong[0]].shape)}, model {tuple(own[wrong[0]].shape)}).")
    model.load_state_dict(state, strict=True)


def rng_state() -> dict:
    """Every global random stream as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
