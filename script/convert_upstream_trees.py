"""Convert upstream PPD's dynamic sparse trees (Python modules of dict literals) into this package's JSON tree files.

    python script/convert_upstream_trees.py --upstream-dir parallel-prompt-decoding/prompt/inference \\
        --output-dir prompt/inference/trees

Each upstream module `dynamic_sparse_trees_<N>_<family>.py` defines `dynamic_sparse_trees_<L> = {depth: [...]}` for
many tree lengths L; the literals are read with `ast.literal_eval` (nothing is executed) and written, keyed by L, to
`<family>_<N>.json.gz` (compact JSON, gzip). `upstream_trees.json` maps each family to its files and to the tree
length upstream uses by default for it (`prompt.inference.tree.upstream_tree_file` reads it).
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import sys

# upstream module -> (family, special tokens); the family is the substring upstream looks for in the model path
MODULES = {
    "dynamic_sparse_trees_3_vicuna_7b.py": ("vicuna-7b", 3),
    "dynamic_sparse_trees_2_7b.py": ("vicuna-7b", 2),
    "dynamic_sparse_trees_3_vicuna_13b.py": ("vicuna-13b", 3),
    "dynamic_sparse_trees_2_13b.py": ("vicuna-13b", 2),
    "dynamic_sparse_trees_3_MobileLLaMA.py": ("mobilellama", 3),
    "dynamic_sparse_trees_3_vicuna_68m.py": ("vicuna-68m", 3),
}
# the tree upstream's model picks when none is named (prompt/utils.py get_dynamic_sparse_tree); vicuna-68m has none
# there, so its smallest tree
DEFAULT_LENGTHS = {"vicuna-7b": 105, "vicuna-13b": 60, "mobilellama": 285, "vicuna-68m": 300}


def read_module(path: str) -> dict[str, dict]:
    trees = {}
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.startswith("dynamic_sparse_trees_"):
                spec = ast.literal_eval(node.value)
                trees[name.rsplit("_", 1)[1]] = {
                    str(depth): [[list(path), round(float(p), 5), int(n)] for path, p, n in nodes]
                    for depth, nodes in sorted(spec.items())}
    # a tree larger than its own length (upstream's length-1 tree for two special tokens holds one candidate and
    # its special token, 2) is not what its name promises: left out
    fits = {length: spec for length, spec in trees.items()
            if max(sum(1 + n for _, _, n in nodes) for nodes in spec.values()) <= int(length)}
    for length in sorted(set(trees) - set(fits), key=int):
        print(f"{os.path.basename(path)}: left out dynamic_sparse_trees_{length} (larger than its length)")
    return dict(sorted(fits.items(), key=lambda kv: int(kv[0])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream-dir", required=True, help="upstream's prompt/inference folder")
    parser.add_argument("--output-dir", default=os.path.join("prompt", "inference", "trees"))
    args = parser.parse_args(argv)
    index = {}
    for module, (family, n) in MODULES.items():
        path = os.path.join(args.upstream_dir, module)
        if not os.path.isfile(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
        trees = read_module(path)
        name = f"{family}_{n}.json.gz"
        data = json.dumps(trees, separators=(",", ":")).encode()
        target = os.path.join(args.output_dir, name)
        with open(target + ".tmp", "wb") as f:
            f.write(gzip.compress(data, compresslevel=9, mtime=0))
        os.replace(target + ".tmp", target)
        entry = index.setdefault(family, {"default_tree_length": DEFAULT_LENGTHS[family], "files": {}})
        entry["files"][str(n)] = name
        print(f"{module}: {len(trees)} trees -> {name} ({os.path.getsize(target)} bytes)")
    target = os.path.join(args.output_dir, "upstream_trees.json")
    with open(target + ".tmp", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(target + ".tmp", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
