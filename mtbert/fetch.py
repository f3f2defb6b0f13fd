"""`python -m mtbert data fetch`: download the official CS224N data files and verify each one;
`python -m mtbert data fetch-sst-trees`: the Stanford Sentiment Treebank's training trees, for SST
phrase-level training (`sst_phrases_file`).

The files come from the public starter repository at a pinned commit, so their checksums are
known in advance. Each download streams to a temporary file next to its destination and is only
renamed into place once its checksum matches; a present file that already matches is skipped.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .data import FULL_DATA_DIR, SAMPLE_DIR, SPLITS, DataError, missing_file_message, read_task_file
from .io import temp_file_beside

COMMIT = "7ac8260577fc12a86c7aaf38918056c30054ef39"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/{COMMIT}/data"
DEFAULT_DEST = FULL_DATA_DIR
TIMEOUT_S = 60
CHUNK = 1 << 20

# file -> (kind, digest). sha256 where the file was seen (the CS224N data files' SOURCES.md);
# the two quora files too large to copy are known only by their git blob ids.
FILES = {
    "ids-sst-train.csv": ("sha256", "03b2b625c090f94a6afd59f114cde5282e2053aab0b101e87ed695d8a0c5b1df"),
    "ids-sst-dev.csv": ("sha256", "a186ce94577635fbe10beaaddd50f16cccf6c30973221cefdf90deed2a584bfe"),
    "ids-sst-test-student.csv": ("sha256", "bdd5a767faa0c26782117e37767ece154c30d5d04fb8727d09c71e3850a55c7b"),
    "quora-train.csv": ("git-blob", "a3b5546f6a0e65b60a328a5d294d1038f5bed1da"),
    "quora-dev.csv": ("sha256", "bfa3cc954a9ba300ae776a980141de65f622a3c1b97e3fd905d63245bc36d5ad"),
    "quora-test-student.csv": ("git-blob", "f257ef00558555afb50819578a58205732b16354"),
    "sts-train.csv": ("sha256", "15d12efc2d656fffb1d61ac1f08ec4227f43925fd16f420c037cbd063699c21b"),
    "sts-dev.csv": ("sha256", "ce3cad6f16062586ac7ba462c28b010a9be10c530fd5074165860d7b7ab4e93d"),
    "sts-test-student.csv": ("sha256", "dee455745b72e9ca3ff74e7c056bd73e34bad5b8d5641045a2c1e7e131866f47"),
}


# the treebank's PTB training trees (trainDevTestTrees_PTB/trees/train.txt), one tree per line in the
# order of ids-sst-train.csv, from a public copy at a pinned commit
TREES_COMMIT = "d00ea43c904571ea2b275bcfd679476015d2eb4b"
TREES_BASE_URL = f"https://raw.githubusercontent.com/prrao87/fine-grained-sentiment/{TREES_COMMIT}/data/sst/raw_data"
TREES_DEST = FULL_DATA_DIR.parent / "sst-trees"
TREES = {"train.txt": ("sha256", "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7")}


class FetchError(Exception):
    """A download that failed or did not verify; the message names the file or URL."""


def file_digest(path, kind: str) -> str:
    """sha256 of the file, or its git blob id: sha1(b"blob <size>\\0" + content)."""
    path = Path(path)
    if kind == "sha256":
        h = hashlib.sha256()
    elif kind == "git-blob":
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest_dir: Path, name: str) -> Path:
    """Stream `url` into a temporary file in `dest_dir` (same file system, so the rename is atomic)."""
    fd, tmp = temp_file_beside(Path(dest_dir) / name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                out.write(chunk)
    except BaseException as e:  # Ctrl-C included: never leave a partial file behind
        os.unlink(tmp)
        if isinstance(e, urllib.error.HTTPError):
            raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
        if isinstance(e, OSError):  # URLError, timeouts, a full disk
            raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from None
        raise
    return Path(tmp)


def fetch(dest=DEFAULT_DEST, base_url: str = DEFAULT_BASE_URL, files=None, progress=print,
          catalog: dict = FILES) -> list[Path]:
    """Download `files` of `catalog` (default: all of them, the nine CS224N files) into `dest`;
    return their paths, all verified."""
    names = list(catalog) if files is None else list(files)
    for n in names:
        if n not in catalog:
            what = "a CS224N data file" if catalog is FILES else "one of the files to fetch"
            raise FetchError(f"files: {n!r} is not {what}; choose from {', '.join(catalog)}")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"{dest}: cannot create the destination folder ({e.strerror or e})") from None
    done = []
    for name in names:
        kind, want = catalog[name]
        target = dest / name
        if target.is_file():
            if file_digest(target, kind) == want:
                progress(f"{name}: already present, {kind} ok")
                done.append(target)
                continue
            progress(f"{name}: present but its {kind} differs; downloading again")
        url = f"{base_url.rstrip('/')}/{name}"
        progress(f"{name}: downloading {url}")
        tmp = _download(url, dest, name)
        got = file_digest(tmp, kind)
        if got != want:
            tmp.unlink()
            raise FetchError(f"{name}: checksum mismatch, expected {kind} {want} but the download from "
                             f"{url} has {got}; it was not kept")
        os.replace(tmp, target)
        progress(f"{name}: {target.stat().st_size:,} bytes, {kind} ok")
        done.append(target)
    return done


# ---- command line ---------------------------------------------------------------------------

def _cmd_fetch(args) -> int:
    try:
        paths = fetch(args.dest, args.base_url, args.files)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(paths)} file(s) verified in {args.dest}")
    return 0


def _cmd_fetch_trees(args) -> int:
    try:
        (path,) = fetch(args.dest, args.base_url, None, catalog=TREES)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path} verified: use it with --sst-phrases-file {path} (docs/quality.md)")
    return 0


def _cmd_check(args) -> int:
    """Read every file of every task (or of --split) and print what was usable; 1 if a file is missing or
    unreadable, or a task definition is unusable."""
    from .tasks import TaskError, available_tasks
    try:
        specs = available_tasks(args.tasks_file)
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rc = 0
    for spec in specs:
        for split in ([args.split] if args.split else [s for s in ("train", "dev", "test") if s in spec.files]):
            path = spec.file("test" if split == "test-student" else split, args.data_dir)
            if path is None:
                print(f"error: task {spec.name} has no {split} file in its definition", file=sys.stderr)
                rc = 1
                continue
            if not path.is_file():
                print(f"error: {missing_file_message(path, split, spec)}", file=sys.stderr)
                rc = 1
                continue
            try:
                _, report = read_task_file(spec, path)
                print(f"{spec.name} {split}: {report.summary()}")
            except DataError as e:
                print(f"error: {spec.name} {split}: {e}", file=sys.stderr)
                rc = 1
    return rc


def add_cli(subparsers) -> None:
    """Register `fetch` and `check` on the subparsers of the `data` command (see mtbert/cli.py)."""
    f = subparsers.add_parser("fetch", help="download the official CS224N data files, checksum-verified",
                              description="Download the official CS224N data files and verify each one.")
    f.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder to write into (default: %(default)s)")
    f.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help="the files are fetched from <base-url>/<file> (default: the starter repo at commit "
                        f"{COMMIT[:10]})")
    f.add_argument("--files", nargs="+", choices=list(FILES), metavar="FILE",
                   help=f"only these files (default: all): {', '.join(FILES)}")
    f.set_defaults(func=_cmd_fetch)

    t = subparsers.add_parser("fetch-sst-trees", help="download the SST training trees for phrase-level training",
                              description="Download the Stanford Sentiment Treebank's training trees (PTB "
                                          "format, one per line) and verify them: the file sst_phrases_file reads.")
    t.add_argument("--dest", type=Path, default=TREES_DEST, help="folder to write into (default: %(default)s)")
    t.add_argument("--base-url", default=TREES_BASE_URL,
                   help="the file is fetched from <base-url>/train.txt (default: a public copy at commit "
                        f"{TREES_COMMIT[:10]})")
    t.set_defaults(func=_cmd_fetch_trees)

    c = subparsers.add_parser("check", help="read every task's files and report malformed rows",
                              description="Read every file of every task (the built-in ones and a task file's) "
                                          "and report rows, usable rows and the first bad lines, by file and line.")
    c.add_argument("--data-dir", type=Path, default=SAMPLE_DIR, help="default: the shipped sample")
    c.add_argument("--tasks-file", help="a YAML file of task definitions (see docs/tasks.md)")
    c.add_argument("--split", choices=SPLITS + ("test",), help="only this split (default: every file of every task)")
    c.set_defaults(func=_cmd_check)
