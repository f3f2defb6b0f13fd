"""The user docs describe the product, not how it was developed: no "session N", no issue numbers,
no borrowed ("lent") hardware, no "development machine", no paths to a folder beside the
repository (`../shared`) and no absolute paths of one machine (/root, /home, /work, /tmp ...)."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the tracked files a user reads as documentation (git pathspecs: `*` also crosses folders)
USER_DOCS = ("README.md", "docs/*.md", "checkpoints/*.md", "data/*.md", "data/**/*.md", "configs/*")
DEVELOPMENT_WORDS = re.compile(
    r"\bsessions? [0-9]|\bsession ?#|\bissue ?#?[0-9]|\blent\b|development machine|\.\./shared"
    r"|(^|[\s(`\"])/(root|home|work|tmp|mnt|srv|opt)/", re.IGNORECASE)


def user_docs() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *USER_DOCS], cwd=REPO, capture_output=True, check=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def hits(path: Path) -> list[str]:
    """`file:line: text` for each line of `path` with a development word."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, FileNotFoundError):  # a binary file, or one deleted but not yet unstaged
        return []
    return [f"{path.relative_to(REPO)}:{n}: {line.strip()[:160]}"
            for n, line in enumerate(lines, 1) if DEVELOPMENT_WORDS.search(line)]


@pytest.mark.parametrize("text", [
    "Four runs, made in session 4.", "sessions 1 and 2", "see session #3", "(issue 5, item 5)", "issue #12",
    "on a lent NVIDIA H200", "On the development machine: 2 cores", "--data-dir ../shared/data/cs224n",
    "--out /tmp/x.md", "runs in `/work/main`", "(/home/me/data)", "/root/.cache"])
def test_the_check_finds_development_words(text):
    assert DEVELOPMENT_WORDS.search(text), text


@pytest.mark.parametrize("text", [
    "8 concurrent sessions each get their own answer", "a silent failure", "the issue tracker",
    "excellent", "data/cs224n/quora-dev.csv", "runs/<run>/best", "https://huggingface.co/settings/tokens",
    "the machine's 2 cores", "python -m mtbert data fetch --dest data/cs224n"])
def test_the_check_leaves_product_words_alone(text):
    assert not DEVELOPMENT_WORDS.search(text), text


def test_user_docs_describe_the_product_not_its_development():
    docs = user_docs()
    assert REPO / "docs" / "results.md" in docs and REPO / "README.md" in docs
    found = [h for path in docs for h in hits(path)]
    assert not found, "development words in the user docs:\n" + "\n".join(found)
