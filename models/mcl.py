"""MCL: meta classification likelihood (Hsu, Lv, Schlosser, Odom & Kira, ICLR 2019). Documentation: docs/methods/l2c.md.

A clustering network trained from pairwise targets only: from labels (`l2c.targets labels`, pairwise-supervised,
reads labels) or from a frozen similarity network trained on other classes (`l2c.targets spn`, L2C transfer).
The network, the two modes and the hooks are in models/l2c_pairwise.py; the loss is losses.l2c.mcl_loss.
"""
from .l2c_pairwise import MCL

METHOD = MCL
