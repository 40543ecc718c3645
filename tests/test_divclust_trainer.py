"""The trainer's DivClust state: threshold and label bank follow the documented mechanism and survive a checkpoint."""
import io

import pytest
import torch

from engine.config import ConfigError
from engine.run import load_config as resolve
from engine.divclust import DivClust
from engine.run import _notes_for


def one_hot(labels, k):
    return torch.nn.functional.one_hot(labels, k).double()


def test_threshold_adapts_and_state_round_trips():
    cfg = resolve(["--clusterings", "3", "--NMI_target", "0.8", "--NMI_interval", "2"])
    div = DivClust(cfg, torch.device("cpu"))
    assert div.active and div.threshold == 1.0
    shared = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(3))
    p = one_hot(shared.repeat(3, 1), 4)               # identical clusterings: NMI 1 > target, so d shrinks
    losses = [div.step(p, step)[0] for step in range(3)]
    assert div.threshold == pytest.approx(0.99 ** 2)  # updates at steps 0 and 2
    assert div.bank.shape == (3, 30)
    assert losses[-1].item() > 0                      # identical clusterings are penalised once d < 1
    buffer = io.BytesIO()
    torch.save(div.state_dict(), buffer)
    buffer.seek(0)
    restored = DivClust(cfg, torch.device("cpu"))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.threshold == div.threshold and torch.equal(restored.bank, div.bank)


def test_divclust_config_errors():
    with pytest.raises(ConfigError, match="NMI_target"):
        resolve(["--clusterings", "2", "--NMI_target", "1.5"])
    assert any("no effect with one clustering" in note
               for note in _notes_for(resolve(["--NMI_target", "0.8"])))
