#!/usr/bin/env python3
"""The L2C Omniglot transfer protocol (docs/methods/l2c.md): one similarity network trained with
labels on Omniglot background, then MCL or KCL on each of the 20 evaluation alphabets separately, ACC averaged.

Usage:
    python scripts/l2c_omniglot.py --data_root DATA [--method mcl|kcl] [--k 100|C] [--seeds 0 1 2]
                                   [--spn_checkpoint PATH] [--alphabets Angelic Keble ...] [-- --key value ...]

Step 1 trains the similarity network (preset spn_omniglot, run `reference`) unless --spn_checkpoint is given or
runs/spn_omniglot/reference/checkpoints/last.pt exists (as the official demo reuses its saved model). Step 2 runs
`<method>_omniglot` once per alphabet and seed with that network frozen (K = 100, or the alphabet's number of
characters with --k C), and prints per-alphabet ACC / NMI / ARI / clusters used and the average over alphabets (the
official README averages 3 clustering runs: --seeds 0 1 2). Options after `--` go to every main.py call (e.g.
`-- --device cuda --num_workers 4`). A summary JSON is written to <output_dir>/<method>_omniglot/summary-k<K>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main as entry  # noqa: E402

# The 20 evaluation alphabets and their numbers of characters (docs/methods/l2c.md; 659 in all).
ALPHABETS = {
    "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26, "Ge_ez": 26,
    "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47, "Manipuri": 40,
    "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23,
    "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
}


def option(args: list[str], key: str, default: str) -> str:
    """The value of --key in a main.py argument list (last one wins), or default."""
    value = default
    for i, arg in enumerate(args[:-1]):
        if arg == f"--{key}":
            value = args[i + 1]
    return value


def train_similarity_network(data_root: str, image_size: int, extra: list[str]) -> Path:
    out = Path(option(extra, "output_dir", "runs"))
    checkpoint = out / "spn_omniglot" / "reference" / "checkpoints" / "last.pt"
    if checkpoint.is_file():
        print(f"step 1: reusing the similarity network {checkpoint}")
        return checkpoint
    print("step 1: training the similarity network on Omniglot background (supervised, preset spn_omniglot)")
    options = json.dumps({"split": "background", "image_size": image_size})
    entry.main(["--preset", "spn_omniglot", "--data_root", data_root, "--dataset_options", options,
                "--image_size", str(image_size), "--run_name", "reference", *extra])
    return checkpoint


def cluster_alphabet(method: str, alphabet: str, k: int, seed: int, spn: Path, data_root: str, image_size: int,
                     extra: list[str]) -> dict:
    options = json.dumps({"split": "evaluation", "alphabet": alphabet, "image_size": image_size})
    name = f"{alphabet.replace('(', '').replace(')', '')}-k{k}-seed{seed}"
    results = entry.main(["--preset", f"{method}_omniglot", "--data_root", data_root, "--dataset_options", options,
                          "--image_size", str(image_size), "--num_clusters", str(k), "--seed", str(seed),
                          "--l2c.spn_checkpoint", str(spn), "--run_name", name, *extra])
    head = results["heads"][0]
    used = sum(1 for size in results["cluster_sizes"][0] if size > 0)
    return {"alphabet": alphabet, "seed": seed, "k": k, "acc": head["acc"], "nmi": head["nmi"], "ari": head["ari"],
            "clusters_used": used, "characters": ALPHABETS.get(alphabet)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, help="folder holding omniglot-py/images_{background,evaluation}")
    parser.add_argument("--method", choices=("mcl", "kcl"), default="mcl")
    parser.add_argument("--k", default="100", help="clusters per alphabet: a number (unknown K, official 100) or C")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--spn_checkpoint", default=None, help="a trained similarity network (skips step 1)")
    parser.add_argument("--alphabets", nargs="+", default=list(ALPHABETS), help="a subset of the 20 alphabets")
    parser.add_argument("--image_size", type=int, default=32, help="network input size (official 32)")
    args = parser.parse_args(own)
    if args.k != "C" and not args.k.isdigit():
        parser.error("--k must be a positive number or C")

    spn = Path(args.spn_checkpoint) if args.spn_checkpoint else train_similarity_network(
        args.data_root, args.image_size, extra)
    rows = []
    for alphabet in args.alphabets:
        k = ALPHABETS[alphabet] if args.k == "C" else int(args.k)
        for seed in args.seeds:
            print(f"step 2: {args.method} on {alphabet} (K = {k}, seed {seed})")
            rows.append(cluster_alphabet(args.method, alphabet, k, seed, spn, args.data_root, args.image_size, extra))
    per_alphabet = {}
    for alphabet in args.alphabets:
        mine = [r for r in rows if r["alphabet"] == alphabet]
        per_alphabet[alphabet] = {m: sum(r[m] for r in mine) / len(mine)
                                  for m in ("acc", "nmi", "ari", "clusters_used")}
    average = {m: sum(v[m] for v in per_alphabet.values()) / len(per_alphabet) for m in ("acc", "nmi", "ari")}
    print(f"\n{'alphabet':<32} {'C':>3} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'used':>6}")
    for alphabet, v in per_alphabet.items():
        print(f"{alphabet:<32} {ALPHABETS.get(alphabet, 0):>3} {v['acc']:6.3f} {v['nmi']:6.3f} {v['ari']:6.3f} "
              f"{v['clusters_used']:6.1f}")
    print(f"{'Average':<32} {'':>3} {average['acc']:6.3f} {average['nmi']:6.3f} {average['ari']:6.3f}")
    summary = {"method": args.method, "k": args.k, "seeds": args.seeds, "spn_checkpoint": str(spn),
               "per_alphabet": per_alphabet, "average": average, "runs": rows}
    out = Path(option(extra, "output_dir", "runs")) / f"{args.method}_omniglot" / f"summary-k{args.k}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"summary: {out}")
    return summary


if __name__ == "__main__":
    main()
