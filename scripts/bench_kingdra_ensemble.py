"""What a Kingdra ensemble of M Ladder-IM networks costs against one network: one training step (the four encoder
passes, the decoder, backward and the Adam step) of the batched ensemble (stacked parameters, one pass) at M = 1
and M = 10, for the official widths and smaller ones.

    python scripts/bench_kingdra_ensemble.py                       # CPU, input 64 (digits) and 784 (MNIST)
    OMP_NUM_THREADS=1 python scripts/bench_kingdra_ensemble.py     # on a loaded machine
    python scripts/bench_kingdra_ensemble.py --device cuda

Ten separate runs cost 10 x the M = 1 time; the table gives the batched ensemble's time as a multiple of one
network's (the "ensemble / one" column: 10 would mean no gain from batching). Milliseconds are medians over
`--steps` steps after warm-up. The machine's load average is printed first: compare numbers from quiet machines.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import resolve  # noqa: E402
from models.base import DataInfo  # noqa: E402
from models.kingdra import Kingdra  # noqa: E402


def step_ms(members: int, widths: list[int], input_dim: int, *, batch: int, steps: int, supervised: bool,
            device: torch.device) -> float:
    cfg = resolve(["--preset", "kingdra_digits", "--kingdra.ensemble_size", str(members),
                   "--kingdra.hidden_sizes", str(widths)])
    n = 4 * batch
    method = Kingdra(cfg, DataInfo("vector", 0, 0, input_dim, n, 10)).to(device)
    optimizer = torch.optim.Adam(method.parameters(), lr=0.002)
    data = torch.rand(n, input_dim, device=device)
    if supervised:                                      # the pseudo-label stream: a fourth encoder pass
        method._data, method._supervised = data, True
        method.sup_weight.fill_(1.0)
        method.sup_index.copy_(torch.randint(0, n, method.sup_index.shape))
        method.sup_target.copy_(torch.randint(0, 10, method.sup_target.shape))
    batch_data = {"views": [data[:batch]], "index": torch.arange(batch, device=device)}
    times = []
    for i in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = method.training_step(batch_data, i)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"load average {load}; torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}\n")
    print(f"| input | widths | supervised stream | one network (ms/step) | ensemble of {args.members} (ms/step) "
          f"| ensemble / one |")
    print("|---|---|---|---|---|---|")
    for input_dim in (64, 784):
        for widths in ([256, 256], [1200, 1200]):
            for supervised in (False, True):
                one = step_ms(1, widths, input_dim, batch=args.batch, steps=args.steps, supervised=supervised,
                              device=device)
                many = step_ms(args.members, widths, input_dim, batch=args.batch, steps=args.steps,
                               supervised=supervised, device=device)
                print(f"| {input_dim} | {widths} | {'yes' if supervised else 'no'} | {one:.1f} | {many:.1f} | "
                      f"{many / one:.1f} |", flush=True)


if __name__ == "__main__":
    main()
