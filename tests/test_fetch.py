"""`data fetch` against a real HTTP server on 127.0.0.1 serving copies of the shared files."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mtbert import fetch as F
from shared_data import CS224N as SHARED_DIR
from shared_data import needs_shared

REPO = Path(__file__).resolve().parents[1]
pytestmark = needs_shared
GOOD = ["ids-sst-dev.csv", "sts-dev.csv"]
CORRUPT = "sts-test-student.csv"
# git blob ids from the full data's cs224n/SOURCES.md: an independent check of file_digest("git-blob")
BLOBS = {"ids-sst-dev.csv": "3171aa629a340809d2db4a50df8f6e5ec9420ab0",
         "sts-dev.csv": "9392860e584717976b8d817cc40c9e6ceeec27e0"}


class Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):  # keep the test output quiet, but remember the request
                log.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture()
def server(tmp_path, monkeypatch):
    root = tmp_path / "www" / "data"
    root.mkdir(parents=True)
    for name in GOOD:
        shutil.copy(SHARED_DIR / name, root / name)
    text = (SHARED_DIR / CORRUPT).read_bytes()
    (root / CORRUPT).write_bytes(text.replace(b"A band", b"A hand", 1))  # one changed byte
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server(tmp_path / "www")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_file_digest_matches_sha256_and_git_blob_ids():
    for name, blob in BLOBS.items():
        path = SHARED_DIR / name
        assert F.file_digest(path, "git-blob") == blob
        assert F.file_digest(path, "sha256") == hashlib.sha256(path.read_bytes()).hexdigest() == F.FILES[name][1]


def test_fetch_downloads_verifies_and_then_skips(server, tmp_path, user_modes):
    dest = tmp_path / "dest"
    msgs: list[str] = []
    paths = F.fetch(dest, server.url, GOOD, progress=msgs.append)
    assert paths == [dest / n for n in GOOD]
    for n in GOOD:
        assert (dest / n).read_bytes() == (SHARED_DIR / n).read_bytes()
    assert server.requests == [f"/data/{n}" for n in GOOD]
    assert sorted(p.name for p in dest.iterdir()) == sorted(GOOD)  # no temp files left
    assert {(dest / n).stat().st_mode & 0o777 for n in GOOD} == {user_modes[0]}  # not mkstemp's owner-only 0600

    msgs.clear()
    assert F.fetch(dest, server.url, GOOD, progress=msgs.append) == paths
    assert len(server.requests) == 2 and all("already present" in m for m in msgs)


def test_a_changed_local_file_is_downloaded_again(server, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sts-dev.csv").write_text("not the file\n")
    F.fetch(dest, server.url + "/", ["sts-dev.csv"], progress=lambda m: None)
    assert (dest / "sts-dev.csv").read_bytes() == (SHARED_DIR / "sts-dev.csv").read_bytes()


def test_checksum_mismatch_names_the_file_and_both_hashes(server, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(F.FetchError) as err:
        F.fetch(dest, server.url, [CORRUPT], progress=lambda m: None)
    served = hashlib.sha256((tmp_path / "www" / "data" / CORRUPT).read_bytes()).hexdigest()
    msg = str(err.value)
    assert CORRUPT in msg and F.FILES[CORRUPT][1] in msg and served in msg
    assert list(dest.iterdir()) == []  # the temp file is gone and nothing was renamed into place


def test_git_blob_verified_files(server, tmp_path, monkeypatch):
    # quora-train.csv is known only by its git blob id; serve a stand-in under a blob id computed
    # here the way `git hash-object` does, and check that the real id is refused for it
    content = (SHARED_DIR / "sts-dev.csv").read_bytes()
    shutil.copy(SHARED_DIR / "sts-dev.csv", tmp_path / "www" / "data" / "quora-train.csv")
    with pytest.raises(F.FetchError, match=r"quora-train\.csv: checksum mismatch, expected git-blob a3b5546f"):
        F.fetch(tmp_path / "d1", server.url, ["quora-train.csv"], progress=lambda m: None)
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    assert blob == BLOBS["sts-dev.csv"]
    monkeypatch.setitem(F.FILES, "quora-train.csv", ("git-blob", blob))
    (path,) = F.fetch(tmp_path / "d2", server.url, ["quora-train.csv"], progress=lambda m: None)
    assert path.read_bytes() == content


def test_http_errors_and_bad_names(server, tmp_path):
    with pytest.raises(F.FetchError, match=r"/data/quora-dev\.csv: HTTP 404"):
        F.fetch(tmp_path / "d", server.url, ["quora-dev.csv"], progress=lambda m: None)
    assert list((tmp_path / "d").iterdir()) == []
    with pytest.raises(F.FetchError, match=r"files: 'train\.csv' is not a CS224N data file; choose from ids-sst"):
        F.fetch(tmp_path / "d", server.url, ["train.csv"])
    with pytest.raises(F.FetchError, match="127.0.0.1:1/"):  # nothing listens on port 1
        F.fetch(tmp_path / "d", "http://127.0.0.1:1", ["sts-dev.csv"], progress=lambda m: None)


def run_cli(*args):
    env = {**os.environ, "no_proxy": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "mtbert", "data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_fetch_in_a_subprocess(server, tmp_path):
    dest = tmp_path / "cli"
    ok = run_cli("fetch", "--base-url", server.url, "--dest", str(dest), "--files", *GOOD)
    assert ok.returncode == 0, ok.stderr
    assert "2 file(s) verified" in ok.stdout and "sha256 ok" in ok.stdout
    assert (dest / "sts-dev.csv").read_bytes() == (SHARED_DIR / "sts-dev.csv").read_bytes()

    bad = run_cli("fetch", "--base-url", server.url, "--dest", str(dest), "--files", CORRUPT)
    assert bad.returncode == 1 and f"error: {CORRUPT}: checksum mismatch" in bad.stderr
    assert not (dest / CORRUPT).exists()


def test_cli_check_in_a_subprocess():
    r = run_cli("check", "--data-dir", str(SHARED_DIR), "--split", "dev")
    assert r.returncode == 0, r.stderr
    assert "quora-dev.csv: 20,212 usable of 20,214 rows; 2 skipped (line 2577" in r.stdout


def test_cli_usage_help_and_missing_files(capsys):
    from mtbert.cli import main  # in-process: each interpreter start costs seconds
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "--files", "nope.csv"])
    assert e.value.code == 2 and "argument --files: invalid choice: 'nope.csv'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "fetch", "--help"])
    assert "--base-url" in capsys.readouterr().out
    assert main(["data", "check", "--data-dir", str(SHARED_DIR), "--split", "test-student"]) == 1
    out, err = capsys.readouterr()
    assert "quora-test-student.csv: no such file" in err and "sts-test-student.csv: 1,725 usable" in out
    assert main(["data", "check"]) == 0  # the shipped sample
    assert "ids-sst-train.csv: 3,000 usable of 3,000 rows" in capsys.readouterr().out


def test_fetch_sst_trees_in_a_subprocess_verifies_the_treebank_file(tmp_path, monkeypatch):
    """`data fetch-sst-trees` against a loopback copy of the training trees: the verified file lands in
    --dest; a copy with one changed byte is refused and nothing is kept."""
    trees = Path(SHARED_DIR).parent / "sst-trees" / "train.txt"
    www = tmp_path / "www" / "raw"
    www.mkdir(parents=True)
    shutil.copy(trees, www / "train.txt")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server(tmp_path / "www")
    try:
        url = s.url.rsplit("/", 1)[0] + "/raw"
        ok = run_cli("fetch-sst-trees", "--base-url", url, "--dest", str(tmp_path / "t"))
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "t" / "train.txt").read_bytes() == trees.read_bytes()
        assert "--sst-phrases-file" in ok.stdout and s.requests == ["/raw/train.txt"]
        (www / "train.txt").write_bytes(trees.read_bytes().replace(b"(3 ", b"(4 ", 1))
        bad = run_cli("fetch-sst-trees", "--base-url", url, "--dest", str(tmp_path / "u"))
        assert bad.returncode == 1 and "train.txt: checksum mismatch" in bad.stderr
        assert list((tmp_path / "u").iterdir()) == []
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
