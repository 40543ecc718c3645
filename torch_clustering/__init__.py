"""k-means and Gaussian mixtures in pure PyTorch (CPU/CUDA, float32/float64, memory-bounded, DDP-aware).

docs/torch_clustering.md. Used by evaluation (k-means / GMM on `features(x)`) and by
ProPos/HaDis/DigPro for pseudo-labels.

    from torch_clustering import KMeans, GaussianMixture, kmeans
    labels = KMeans(10, metric="cosine").fit_predict(features)          # (N,) int64 on features' device
    result = kmeans(features, 10)                                       # labels, centers, inertia, n_iter, ...
    posteriors = GaussianMixture(10, covariance_type="diag").fit(features).predict_proba(features)

Under torch.distributed, `distributed=True` splits the restarts over ranks that all hold every point (the
reference's mode); `distributed=True, sharded=True` clusters the union of the ranks' slices, with the result
equal to one process on the concatenated data. Implementation map: `kmeans.py` (Lloyd, restarts, the classes),
`kmeans_plus_plus.py` (initialisation), `gmm.py` (EM), `_distances.py` (chunked GEMM kernels, working copy),
`_parallel.py` / `_gemm.py` (CPU threading and BLAS choice), `_collectives.py` (DDP), `_validation.py`.
"""

from .gmm import GaussianMixture
from .kmeans import KMeans, KMeansResult, kmeans, predict_nearest

__all__ = ["GaussianMixture", "KMeans", "KMeansResult", "kmeans", "predict_nearest"]
