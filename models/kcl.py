"""KCL: KL-divergence contrastive loss (Hsu & Kira, ICLR-W 2016; L2C, ICLR 2018). Documentation: docs/methods/l2c.md.

A clustering network trained from pairwise targets only: from labels (`l2c.targets labels`, pairwise-supervised,
reads labels) or from a frozen similarity network trained on other classes (`l2c.targets spn`, L2C transfer).
The network, the two modes and the hooks are in models/l2c_pairwise.py; the loss is losses.l2c.kcl_loss.
"""
from .l2c_pairwise import KCL

METHOD = KCL
