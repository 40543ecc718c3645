"""`20news`, `reuters`: text corpora as tf-idf feature vectors (docs/datasets.md), float32 [N, D].

Kingdra (after IMSAT and DEC) clusters these as feature matrices read from its pre-processed
`ens_cluster_datasets/<20_news|reuters>/train_X.npy` + `train_Y.npy`, whose recipe is not published. With
`source="auto"` (default) those matrices are used when present (<root>/ens_cluster_datasets/<name>/ or
<root>/<name>/); otherwise, or with `source="corpus"`, the features are rebuilt from the raw corpus with the
recipe below, which `RawData.description` records. `source="kingdra"` requires the matrices.

20news: the "bydate" corpus, 11,314 train + 7,532 test = 18,846 documents, 20 newsgroups (sorted names).
  Read from <dir>/20news-bydate-train/<group>/<id> and <dir>/20news-bydate-test/ (dir = <root>,
  <root>/20news, <root>/20news_home), else the archive 20news-bydate.tar.gz in those folders, else
  scikit-learn's cache 20news-bydate_py3.pkz (in <root> or scikit-learn's data home). `--download true`
  fetches it with scikit-learn's downloader into <root>. Recipe (IMSAT's "2,000 most frequent words"):
  latin-1 text, `CountVectorizer(max_features=2000)` -> `TfidfTransformer(norm="l2", sublinear_tf=True)`;
  documents with no kept word are dropped (the count is reported). `split`: "all" (train + test merged,
  default), "train", "test". IMSAT's table lists 18,040 documents (its filtering is not public).

reuters (REUTERS-10K, DEC's recipe from `dec/dec.py`): RCV1-v2 token files lyrl2004_tokens_test_pt0..3.dat
  and lyrl2004_tokens_train.dat (plain or .gz) plus rcv1-v2.topics.qrels, in <root>, <root>/reuters or
  <root>/rcv1. Keep documents with exactly one of the four root topics CCAT=0, GCAT=1, MCAT=2, ECAT=3;
  counts over the corpus's `max_features`=2000 most frequent terms; `TfidfTransformer(norm="l2",
  sublinear_tf=True)`; x sqrt(number of terms); permutation `np.random.RandomState(seed).permutation(N)`
  (seed 1234 = DEC's `np.random.seed(1234)`); the first `num_docs`=10,000 (null = all). The tf-idf is
  computed sparse over all kept documents (DEC densified the whole matrix first: same numbers, far less
  memory). No downloader exists (the files are the JMLR appendices of Lewis et al. 2004).
"""
from __future__ import annotations

import gzip
import os
import tarfile
from typing import Iterator

import numpy as np

from .lookup import check_choice, expand_root, log, not_found, root_for_download, under
from .registry import DatasetError, RawData, register

SOURCES = ("auto", "kingdra", "corpus")
REUTERS_TOKEN_FILES = ["lyrl2004_tokens_test_pt0.dat", "lyrl2004_tokens_test_pt1.dat",
                       "lyrl2004_tokens_test_pt2.dat", "lyrl2004_tokens_test_pt3.dat", "lyrl2004_tokens_train.dat"]
REUTERS_QRELS = "rcv1-v2.topics.qrels"
REUTERS_TOPICS = {"CCAT": 0, "GCAT": 1, "MCAT": 2, "ECAT": 3}
RCV1_README = "http://www.ai.mit.edu/projects/jmlr/papers/volume5/lewis04a/lyrl2004_rcv1v2_README.htm"


def _check_positive(dataset: str, option: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DatasetError(f"dataset {dataset!r}: option {option}={value!r} must be a positive integer"
                         f"{' or null' if allow_none else ''}.")


def _kingdra_matrices(dataset: str, root: str | None, folder_name: str, source: str,
                      split: str) -> RawData | None:
    """Kingdra's pre-processed matrices when present (and allowed by `source`), else None."""
    folders = under(root, f"ens_cluster_datasets/{folder_name}", folder_name)
    found = next((f for f in folders if os.path.isfile(os.path.join(f, "train_X.npy"))
                  and os.path.isfile(os.path.join(f, "train_Y.npy"))), None)
    if found is None or source == "corpus":
        if source == "kingdra":
            raise not_found(dataset, folders, "train_X.npy + train_Y.npy (Kingdra's ens_cluster_datasets)",
                            f"Copy Kingdra's ens_cluster_datasets/{folder_name}/ there, or use source: corpus.")
        return None
    if split != "all":
        raise DatasetError(f"dataset {dataset!r}: Kingdra's matrices have no train/test split; use split: all "
                         f"or source: corpus")
    x = np.load(os.path.join(found, "train_X.npy"), allow_pickle=False)
    y = np.load(os.path.join(found, "train_Y.npy"), allow_pickle=False).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise DatasetError(f"{found}: train_X.npy {x.shape} and train_Y.npy {y.shape} do not match")
    description = f"{dataset}: Kingdra's pre-processed matrix, {x.shape[0]} x {x.shape[1]}, from {found}"
    log.info(description)
    return RawData(x.astype(np.float32), y.astype(np.int64), description)


def _tfidf(documents, max_features: int):
    """Sparse counts over the `max_features` most frequent terms -> l2-normalised sublinear tf-idf."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    counts = CountVectorizer(max_features=max_features, dtype=np.float64).fit_transform(documents)
    return counts, TfidfTransformer(norm="l2", sublinear_tf=True).fit_transform(counts)


# ---------------------------------------------------------------------------------------------- 20news

def _20news_from_folders(folder: str, parts: list[str]) -> tuple[list[str], list[str]]:
    texts, groups = [], []
    for part in parts:
        part_dir = os.path.join(folder, f"20news-bydate-{part}")
        for group in sorted(os.listdir(part_dir)):
            group_dir = os.path.join(part_dir, group)
            if not os.path.isdir(group_dir):
                continue
            for name in sorted(os.listdir(group_dir)):
                with open(os.path.join(group_dir, name), "rb") as f:
                    texts.append(f.read().decode("latin-1"))
                groups.append(group)
    return texts, groups


def _20news_from_archive(archive: str, parts: list[str]) -> tuple[list[str], list[str]]:
    found: dict[tuple[str, str, str], str] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            bits = member.name.strip("/").split("/")
            if member.isfile() and len(bits) >= 3 and bits[-3] in {f"20news-bydate-{p}" for p in parts}:
                found[(bits[-3], bits[-2], bits[-1])] = tar.extractfile(member).read().decode("latin-1")
    order = {f"20news-bydate-{p}": i for i, p in enumerate(parts)}
    keys = sorted(found, key=lambda k: (order[k[0]], k[1], k[2]))
    return [found[k] for k in keys], [k[1] for k in keys]


def _20news_from_sklearn(data_home: str | None, split: str, download: bool) -> tuple[list[str], list[str]]:
    from sklearn.datasets import fetch_20newsgroups

    bunch = fetch_20newsgroups(data_home=data_home, subset=split, shuffle=False, download_if_missing=download)
    return list(bunch.data), [bunch.target_names[t] for t in bunch.target]


@register("20news")
def read_20news(root: str | None, *, download: bool = False, split: str = "all", max_features: int = 2000,
                source: str = "auto") -> RawData:
    """20 Newsgroups (bydate) as float32 tf-idf vectors [N, max_features]; split 'all' = train + test."""
    check_choice("20news", "split", split, ("all", "train", "test"))
    check_choice("20news", "source", source, SOURCES)
    _check_positive("20news", "max_features", max_features)
    root = expand_root(root)
    matrices = _kingdra_matrices("20news", root, "20_news", source, split)
    if matrices is not None:
        return matrices
    parts = ["train", "test"] if split == "all" else [split]
    bases = under(root, "", "20news", "20news_home")
    folders = [b for b in bases if all(os.path.isdir(os.path.join(b, f"20news-bydate-{p}")) for p in parts)]
    archives = [a for a in (os.path.join(b, "20news-bydate.tar.gz") for b in bases) if os.path.isfile(a)]
    # scikit-learn's data home, computed as sklearn.datasets.get_data_home does, without creating it.
    sklearn_home = os.path.expanduser(os.environ.get("SCIKIT_LEARN_DATA", os.path.join("~", "scikit_learn_data")))
    homes = under(root, "") + [sklearn_home]
    caches = [h for h in homes if os.path.isfile(os.path.join(h, "20news-bydate_py3.pkz"))]
    if folders:
        texts, groups = _20news_from_folders(folders[0], parts)
        origin = os.path.join(folders[0], "20news-bydate-{" + ",".join(parts) + "}")
    elif archives:
        texts, groups = _20news_from_archive(archives[0], parts)
        origin = archives[0]
    elif caches or download:
        home = caches[0] if caches else root_for_download("20news", root)
        texts, groups = _20news_from_sklearn(home, split, download)
        origin = f"scikit-learn's cache in {home}"
    else:
        searched = [os.path.join(b, f"20news-bydate-{p}") for b in bases for p in parts]
        searched += [os.path.join(b, "20news-bydate.tar.gz") for b in bases]
        searched += [os.path.join(h, "20news-bydate_py3.pkz") for h in homes]
        raise not_found(
            "20news", searched,
            "20news-bydate-train/<group>/<id> and 20news-bydate-test/<group>/<id> (the extracted "
            "20news-bydate.tar.gz), the archive itself, or scikit-learn's cache 20news-bydate_py3.pkz",
            "Get it with --download true (scikit-learn's 20 Newsgroups downloader, into <data_root>) or put "
            "20news-bydate.tar.gz (http://qwone.com/~jason/20Newsgroups/) in <data_root>.",
        )
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    labels = np.asarray([index[g] for g in groups], dtype=np.int64)
    counts, features = _tfidf(texts, max_features)
    keep = np.asarray(counts.getnnz(axis=1) > 0)
    data = np.asarray(features[keep].todense(), dtype=np.float32)
    description = (f"20news: {' + '.join(parts)}{' merged' if len(parts) > 1 else ''}, {len(texts)} documents, "
                   f"{len(texts) - len(data)} with no kept word dropped -> {len(data)}; {len(names)} groups; "
                   f"recipe: latin-1, CountVectorizer(max_features={max_features}) -> TfidfTransformer(norm=l2, "
                   f"sublinear_tf=True); from {origin}")
    log.info(description)
    return RawData(data, labels[keep], description, names)


# --------------------------------------------------------------------------------------------- reuters

def _open_text(folder: str, name: str):
    plain = os.path.join(folder, name)
    if os.path.isfile(plain):
        return open(plain, encoding="latin-1")
    return gzip.open(plain + ".gz", "rt", encoding="latin-1")


def _has(folder: str, name: str) -> bool:
    return os.path.isfile(os.path.join(folder, name)) or os.path.isfile(os.path.join(folder, name + ".gz"))


def reuters_single_topic(folder: str) -> dict[int, int]:
    """{document id: class} for documents with exactly one of CCAT, GCAT, MCAT, ECAT among their topics."""
    topics: dict[int, list[str]] = {}
    with _open_text(folder, REUTERS_QRELS) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and fields[0] in REUTERS_TOPICS:
                topics.setdefault(int(fields[1]), []).append(fields[0])
    return {did: REUTERS_TOPICS[cats[0]] for did, cats in topics.items() if len(cats) == 1}


def reuters_documents(folder: str) -> Iterator[tuple[int, str]]:
    """(document id, token text) for every document of the five token files, in DEC's file order.

    A document is a `.I <id>` line, a `.W` line, then its token lines."""
    for name in REUTERS_TOKEN_FILES:
        did, lines = None, []
        with _open_text(folder, name) as f:
            for line in f:
                if line.startswith(".I"):
                    if did is not None:
                        yield did, "".join(lines)
                    did, lines = int(line.split()[1]), []
                elif not line.startswith(".W"):
                    lines.append(line)
        if did is not None:
            yield did, "".join(lines)


@register("reuters")
def read_reuters(root: str | None, *, download: bool = False, split: str = "all", num_docs: int | None = 10000,
                 max_features: int = 2000, seed: int = 1234, source: str = "auto") -> RawData:
    """REUTERS-10K (DEC): float32 [num_docs, max_features] tf-idf vectors, 4 classes (CCAT, GCAT, MCAT, ECAT)."""
    check_choice("reuters", "split", split, ("all",))
    check_choice("reuters", "source", source, SOURCES)
    _check_positive("reuters", "num_docs", num_docs, allow_none=True)
    _check_positive("reuters", "max_features", max_features)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"dataset 'reuters': option seed={seed!r} must be an integer.")
    root = expand_root(root)
    matrices = _kingdra_matrices("reuters", root, "reuters", source, split)
    if matrices is not None:
        return matrices
    folders = under(root, "", "reuters", "rcv1")
    needed = REUTERS_TOKEN_FILES + [REUTERS_QRELS]
    folder = next((f for f in folders if all(_has(f, n) for n in needed)), None)
    if folder is None:
        raise not_found(
            "reuters", folders,
            f"the RCV1-v2 files {', '.join(needed)} (each plain or .gz) in one folder",
            f"{'No downloader exists for them, so --download true cannot help. ' if download else ''}Download the "
            f"token files (appendix 12) and the topic qrels (appendix 8) linked from {RCV1_README} into "
            f"<data_root>/reuters.",
        )
    classes = reuters_single_topic(folder)
    labels: list[int] = []

    def kept_documents() -> Iterator[str]:
        for did, text in reuters_documents(folder):
            if did in classes:
                labels.append(classes[did])
                yield text

    _, features = _tfidf(kept_documents(), max_features)
    features = features * np.sqrt(features.shape[1])
    y = np.asarray(labels, dtype=np.int64)
    order = np.random.RandomState(seed).permutation(features.shape[0])
    if num_docs is not None:
        if num_docs > len(order):
            raise DatasetError(f"dataset 'reuters': num_docs={num_docs} but only {len(order)} documents qualify")
        order = order[:num_docs]
    data = np.asarray(features[order].todense(), dtype=np.float32)
    description = (f"reuters: {len(data)} of {features.shape[0]} single-topic RCV1-v2 documents (CCAT=0, GCAT=1, "
                   f"MCAT=2, ECAT=3); recipe (DEC): CountVectorizer(max_features={max_features}) -> "
                   f"TfidfTransformer(norm=l2, sublinear_tf=True) x sqrt({features.shape[1]}), "
                   f"RandomState({seed}).permutation, first {num_docs or 'all'}; from {folder}")
    log.info(description)
    return RawData(data, y[order], description, list(REUTERS_TOPICS))
