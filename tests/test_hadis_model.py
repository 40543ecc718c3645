"""models/hadis.py: the loss is ProPos's plus the hardness-aware self-distillation term (on during warm-up, on the
noisy predictor output and the target of the other view), and a short run lowers it."""
from __future__ import annotations

import pytest
import torch

import main as entry
from losses.hadis import hardness_aware_self_distillation_loss
from tests.family_helpers import build, random_batch, tiny_argv, train_losses


def test_loss_adds_hsd_of_target_teacher_and_predictor_student():
    model, _, bundle, _ = build("hadis", ["--warmup_epochs", "3"])
    model.train()
    model.opts.momentum_base = 1.0          # the EMA leaves the target as it is, so k can be recomputed
    batch = random_batch(bundle, batch=16)
    out = model.training_step(batch, step=0)       # epoch 1 of 3 warm-up epochs: sigma = 0, no PSL
    x1, x2 = batch["views"]
    with torch.no_grad():                           # train mode, same weights: the step's own tensors
        p1, p2 = model.predictor(model.online(x1)), model.predictor(model.online(x2))
        k1, k2 = model.target(x1), model.target(x2)
    hsd = 0.5 * (hardness_aware_self_distillation_loss(k2, p1) + hardness_aware_self_distillation_loss(k1, p2))
    assert out["hsd"].item() == pytest.approx(hsd.item(), rel=1e-5)
    assert out["hsd"].item() > 0
    assert out["loss"].item() == pytest.approx(out["alignment"].item() + hsd.item(), rel=1e-5)
    model.current_epoch = 3                         # after warm-up: + psl_weight * PSL
    out = model.training_step(batch, step=1)
    assert out["loss"].item() == pytest.approx(out["alignment"].item() + out["hsd"].item()
                                               + 0.1 * out["psl"].item(), rel=1e-5)


def test_short_run_lowers_the_loss(tmp_path):
    out = tmp_path / "runs"
    entry.main(tiny_argv("hadis", ["--output_dir", str(out), "--run_name", "a", "--epochs", "4",
                                   "--warmup_epochs", "4"]))
    losses = train_losses(out / "hadis_digits" / "a")
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.2, losses
