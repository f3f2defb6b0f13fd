"""Build `.gpu/`: what a GPU machine with no package registry needs to run the benchmarks and the recipe.

    python scripts/gpu_assets.py            # then, on the GPU machine: bash scripts/gpu_check.sh

- `.gpu/minilm/`: the packaged all-MiniLM-L6-v2 with its weights stored as float16 (45 MB instead
  of 87 MB, so the working tree fits a 64 MiB transfer); every loader casts it back to float32.
- `.gpu/cs224n/` and `.gpu/qqp-extra-labelled.csv`: the train and dev files of ../shared/data.
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
from mtbert.data import QUORA_STANDIN, SHARED_DIR  # noqa: E402

DATA_FILES = ("ids-sst-train.csv", "ids-sst-dev.csv", "quora-dev.csv", "sts-train.csv", "sts-dev.csv")


def build(out: Path, data_dir: Path = SHARED_DIR) -> Path:
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
        shutil.copy(data_dir / name, out / "cs224n" / name)
    shutil.copy(data_dir / QUORA_STANDIN, out / QUORA_STANDIN.name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    print(f"wrote {build(Path(ap.parse_args().out))}")
