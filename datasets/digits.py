"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download)."""
from __future__ import annotations

import numpy as np

from .registry import RawData, register


@register("digits")
def read_digits(root: str | None, *, download: bool = False) -> RawData:
    """All 1,797 images as uint8 [N, 8, 8, 1]. Pixel counts 0..16 are scaled by 255/16 (the documented 1/16
    scaling, expressed on the uint8 range every image pipeline expects)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return RawData(images, bunch.target.astype(np.int64), "sklearn digits, all 1797 images",
                   [str(i) for i in range(10)])
