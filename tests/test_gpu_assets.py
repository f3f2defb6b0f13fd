"""scripts/gpu_assets.py: the float16 copy of MiniLM loads and predicts like the packaged model."""
import subprocess
import sys
from pathlib import Path

import torch

from mtbert.checkpoint import load_base
from shared_data import DATA, needs_shared

REPO = Path(__file__).resolve().parents[1]


@needs_shared
def test_float16_copy_loads_as_float32_and_matches_the_packaged_model(tmp_path):
    r = subprocess.run([sys.executable, "scripts/gpu_assets.py", "--out", str(tmp_path / "gpu"), "--data", str(DATA)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gpu" / "cs224n" / "sts-train.csv").is_file()
    assert (tmp_path / "gpu" / "qqp-extra-labelled.csv").is_file()
    size = (tmp_path / "gpu" / "minilm" / "model.safetensors").stat().st_size
    assert size < 50e6  # half of the 87 MB original: it has to fit a 64 MiB transfer with the repo
    ours, tok = load_base(str(tmp_path / "gpu" / "minilm"))
    ref, _ = load_base("minilm-l6")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    enc = tok.encode(["a quiet, moving film", "the plot never holds"])
    with torch.inference_mode():
        a, b = ours(**enc).last_hidden_state, ref(**enc).last_hidden_state
    assert (a - b).abs().max() < 0.05 and not torch.equal(a, b)  # float16 rounding, nothing more
