"""Build `.gpu/`: what a GPU machine without the packaged MiniLM needs to run the benchmarks and the recipe.

    python scripts/gpu_assets.py --data DATA   # then, on the GPU machine: bash scripts/gpu_check.sh

DATA holds `cs224n/` (the CS224N files) and `quora-full/qqp-extra-labelled.csv` (the Quora train set).

- `.gpu/minilm/`: the packaged all-MiniLM-L6-v2 with its weights stored as float16 (45 MB instead
  of 87 MB, small enough to copy along with the working tree); every loader casts it back to float32.
- `.gpu/cs224n/` and `.gpu/qqp-extra-labelled.csv`: the train and dev files of DATA.
`.gpu/` is ignored by git (.gitignore).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mtbert.checkpoint import minilm_folder  # noqa: E402

QUORA_TRAIN = Path("quora-full") / "qqp-extra-labelled.csv"
DATA_FILES = ("ids-sst-train.csv", "ids-sst-dev.csv", "quora-dev.csv", "sts-train.csv", "sts-dev.csv")


def build(out: Path, data: Path) -> Path:
    src, model = minilm_folder(), out / "minilm"
    model.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt"):
            shutil.copy(f, model / f.name)
    weights = load_file(str(src / "model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(model / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "cs224n").mkdir(exist_ok=True)
    for name in DATA_FILES:
        shutil.copy(data / "cs224n" / name, out / "cs224n" / name)
    shutil.copy(data / QUORA_TRAIN, out / QUORA_TRAIN.name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    ap.add_argument("--data", required=True, help="a folder holding cs224n/ and quora-full/")
    args = ap.parse_args()
    print(f"wrote {build(Path(args.out), Path(args.data))}")
