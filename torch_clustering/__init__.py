"""k-means and Gaussian mixtures in pure PyTorch (CPU/CUDA, float32/float64, memory-bounded, DDP-aware).

Spec: shared/specs/torch_clustering.md. Used by evaluation (k-means / GMM on `features(x)`) and by
ProPos/HaDis/DigPro for pseudo-labels.
"""

from .gmm import GaussianMixture
from .kmeans import KMeans, KMeansResult, kmeans, predict_nearest

__all__ = ["GaussianMixture", "KMeans", "KMeansResult", "kmeans", "predict_nearest"]
