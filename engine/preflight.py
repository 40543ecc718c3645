"""Before the first step: will one training step fit in the device's memory?

The estimate is a lower bound, so it refuses only runs that cannot fit: the parameters with their gradients and
optimizer state, plus the activations of one training batch, measured as the outputs of every leaf module of the
method's evaluation forward on two samples (hooks, eval mode, no gradient, no state changed) and scaled to the
local batch and the method's views. Autograd keeps at least those outputs for the backward pass.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

GIB = 1024 ** 3


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: free device memory; CPU: MemAvailable of /proc/meminfo), None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@torch.no_grad()
def activation_bytes_per_sample(method: nn.Module, data, device: torch.device) -> int:
    """Bytes of every leaf module's output in one evaluation forward, per sample."""
    total = [0]

    def hook(module, args, output) -> None:
        if torch.is_tensor(output):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in method.modules() if not list(m.children())]
    was_training = method.training
    method.eval()
    try:
        batch = [data.eval[i] for i in range(min(2, len(data.eval)))]
        x = data.eval_view({"views": [torch.stack([item["views"][0] for item in batch])]}, device)
        method.features(x)
        probs = method.cluster_probs(x)
        del probs
    finally:
        method.train(was_training)
        for h in handles:
            h.remove()
    return total[0] // max(1, len(batch))


def estimate_step_bytes(method: nn.Module, data, device: torch.device, *, local_batch: int, views: int,
                        optimizer_states: int) -> dict[str, int]:
    """{"parameters", "activations", "total"} bytes of one training step (a lower bound)."""
    params = sum(p.numel() * p.element_size() for p in method.parameters())
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    parameters = params + trainable * (1 + optimizer_states)            # weights, gradients, optimizer state
    activations = activation_bytes_per_sample(method, data, device) * local_batch * max(1, views)
    return {"parameters": parameters, "activations": activations, "total": parameters + activations}


def check_step_memory(trainer, views: int) -> str | None:
    """A message when one training step surely needs more memory than the device has, else None."""
    cfg = trainer.cfg
    free = available_bytes(trainer.device)
    if free is None:
        return None
    local = int(cfg.batch_size) // trainer.world
    states = {"adam": 2, "adamw": 2, "sgd": 1}.get(cfg.optimizer, 2)
    need = estimate_step_bytes(trainer.method, trainer.data, trainer.device, local_batch=local, views=views,
                               optimizer_states=states)
    if need["total"] <= free:
        return None
    per_image = max(1, need["activations"] // max(1, local))
    fits = max(0, int((free - need["parameters"]) // per_image))
    advice = (f"lower --batch_size (about {fits * trainer.world} would fit)" if fits else
              "even one image does not fit with these weights: use a smaller --backbone")
    return (f"not enough memory on {trainer.device}: one training step needs at least {_size(need['total'])} "
            f"(parameters, gradients and optimizer state {_size(need['parameters'])}, activations of {local} images "
            f"x {views} views {_size(need['activations'])}), but only {_size(free)} are free. To fit, {advice}, or "
            f"lower --image_size.")


def _size(n: float) -> str:
    """Bytes as a human-readable size (1 decimal, binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
