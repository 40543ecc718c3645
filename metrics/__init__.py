"""Clustering metrics: host reference implementations (ACC/NMI/ARI) and torch versions for the training device."""

from .clustering import ari, cluster_acc, contingency, evaluate_clustering, nmi
from .diversity import inter_clustering_nmi, mean_inter_clustering_nmi
from .torch_metrics import (ari_from_contingency, ari_torch, contingency_matrix, nmi_from_contingency,
                            nmi_torch)

__all__ = ["ari", "ari_from_contingency", "ari_torch", "cluster_acc", "contingency", "contingency_matrix",
           "evaluate_clustering", "inter_clustering_nmi", "mean_inter_clustering_nmi", "nmi", "nmi_from_contingency",
           "nmi_torch"]
