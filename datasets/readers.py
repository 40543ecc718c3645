"""Import every reader module so each registers its dataset names with `datasets.registry`.

`datasets/__init__.py` imports this module; nothing else needs to.
"""
from . import cifar, digits, folder, idx, imagenet_subsets, omniglot, stl10, text, tiny_imagenet  # noqa: F401
