"""A stand-in Hugging Face Hub on 127.0.0.1, for tests that must not reach the real one.

It implements only what huggingface_hub 2.x calls for create_repo, upload_folder / create_commit,
repo_info, list_repo_files / list_repo_tree and hf_hub_download / snapshot_download:

  POST /api/repos/create                               create (409 when it exists)
  POST /api/validate-yaml                              README front matter check (create_commit)
  POST /api/{type}s/{repo}/preupload/{rev}             every file is uploaded "regular" (base64 in
                                                       the commit), so neither LFS nor Xet is needed
  POST /api/{type}s/{repo}/commit/{rev}                NDJSON: header, file, deletedFile lines
  GET  /api/{type}s/{repo}[/revision/{rev}]            repo info (sha, siblings)
  GET  /api/{type}s/{repo}/tree/{rev}[/{path}]         file listing
  HEAD|GET /{repo}/resolve/{rev}/{file}                ETag, X-Repo-Commit, Content-Length, body

Every commit is kept (revision = "main" or a commit sha), and so is every request, so a test can
check the exact files, card and headers that were sent. With `token` set, requests must carry it
(401 otherwise, as the Hub answers a bad token); private repos are hidden from anyone without it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_sha1(data: bytes) -> str:
    """The oid git (and the Hub) gives a file: what huggingface_hub compares to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (sha, files), oldest first
    messages: list[str] = field(default_factory=list)

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if not self.commits:
            return None
        if revision == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)

    @property
    def files(self) -> dict[str, bytes]:
        return dict(self.commits[-1][1]) if self.commits else {}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class HubStub:
    """Use as a context manager: `with HubStub(token="hf_x") as hub: hub.url …`."""

    def __init__(self, token: str | None = None, user: str = "tester", echo_auth: bool = False):
        self.token = token
        self.user = user
        self.echo_auth = echo_auth  # a careless server quoting the credentials back in its errors
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    @property
    def url(self) -> str:
        return self._url

    def start(self) -> "HubStub":
        stub = self

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self._url = f"http://{host}:{port}"  # kept after stop(), for messages that name it
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "HubStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests look at --

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False,
                 repo_type: str = "model") -> Repo:
        repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type, private))
        repo.commits.append((uuid.uuid4().hex + uuid.uuid4().hex[:8], dict(files)))
        return repo

    def all_bytes_received(self) -> bytes:
        """Every request line, header and body the stub got: where a leaked secret would show."""
        return b"".join(r.method.encode() + r.path.encode() + json.dumps(r.headers).encode() + r.body
                        for r in self.requests)


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- plumbing --

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            return self.rfile.read(n)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), headers, head)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head)

    def _authorized(self) -> bool | None:
        """True: the right token; False: a wrong one; None: none sent."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        return self.hub.token is None or auth == f"Bearer {self.hub.token}"

    def _dispatch(self, method: str) -> None:
        body = self._read_body() if method in ("POST", "PUT") else b""
        url = urlsplit(self.path)
        with self.hub._lock:
            self.hub.requests.append(Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        auth = self._authorized()
        if auth is False:  # what the Hub answers a bad token, whatever was asked
            message = "Invalid credentials in Authorization header"
            if self.hub.echo_auth:
                message += f" ({self.headers.get('Authorization')})"
            return self._error(401, message, head=method == "HEAD")
        try:
            self._route(method, unquote(url.path), parse_qs(url.query), body, auth is True)
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            self._error(400, f"bad request: {e}")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # -- endpoints --

    def _route(self, method: str, path: str, query: dict, body: bytes, authed: bool) -> None:
        hub = self.hub
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body), authed)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        m = _API_REPO.match(path)
        if m:
            kind, repo_id, rest = m.group(1)[:-1], m.group(2), m.group(3) or ""
            repo = hub.repos.get((kind, repo_id))
            if repo is None or (repo.private and not authed):
                return self._error(404, "Repository not found", "RepoNotFound")
            if method == "POST" and rest.startswith("preupload/"):
                return self._preupload(repo, json.loads(body), authed)
            if method == "POST" and rest.startswith("commit/"):
                return self._commit(repo, unquote(rest[len("commit/"):]), body, authed)
            if method == "GET" and (rest == "" or rest.startswith("revision/")):
                return self._info(repo, rest[len("revision/"):] if rest else "main")
            if method == "GET" and rest.startswith("tree/"):
                rev, _, sub = rest[len("tree/"):].partition("/")
                return self._tree(repo, rev, sub)
            return self._error(404, f"stub: no {method} {path}")
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            kind = {"datasets": "dataset", "spaces": "space"}.get(m.group(1), "model")
            return self._resolve(kind, m.group(2), m.group(3), m.group(4), authed, method == "HEAD")
        self._error(404, f"stub: no {method} {path}")

    def _create(self, payload: dict, authed: bool) -> None:
        if not authed:
            return self._error(401, "You must be logged in to create a repo")
        namespace = payload.get("organization") or self.hub.user
        repo_id = f"{namespace}/{payload['name']}"
        kind = payload.get("type") or "model"
        url = f"{self.hub.url}/{repo_id}" if kind == "model" else f"{self.hub.url}/{kind}s/{repo_id}"
        if (kind, repo_id) in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.repos[(kind, repo_id)] = Repo(repo_id, kind, private)
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        text = payload.get("content", "")
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as e:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
            if meta is not None and not isinstance(meta, dict):
                return self._json(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo: Repo, payload: dict, authed: bool) -> None:
        if not authed:
            return self._error(401, "Unauthorized", "RepoNotFound")
        current = repo.files
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None}
                 for f in payload["files"]]
        self._json(200, {"files": files, "commitOid": repo.commits[-1][0] if repo.commits else None})

    def _commit(self, repo: Repo, revision: str, body: bytes, authed: bool) -> None:
        if not authed:
            return self._error(401, "Unauthorized", "RepoNotFound")
        if revision != "main":
            return self._error(400, "stub: commits go to main only")
        files = repo.files
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value["summary"]
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, f"stub: encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:  # lfsFile needs the LFS upload this stub does not offer (preupload said "regular")
                return self._error(400, f"stub: unsupported commit line {key!r}")
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits.append((sha, files))
        repo.messages.append(summary)
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None, "success": True})

    def _info(self, repo: Repo, revision: str) -> None:
        snap = repo.snapshot(revision)
        if snap is None and revision != "main":
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        sha, files = snap or (None, {})
        self._json(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [],
                         "lastModified": "2026-11-25T00:00:00.000Z"})

    def _tree(self, repo: Repo, revision: str, sub: str) -> None:
        snap = repo.snapshot(revision)
        if snap is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        prefix = sub.rstrip("/") + "/" if sub else ""
        entries = [{"type": "file", "path": p, "size": len(b), "oid": git_blob_sha1(b)}
                   for p, b in sorted(snap[1].items()) if p.startswith(prefix)]
        self._json(200, entries)

    def _resolve(self, kind: str, repo_id: str, revision: str, filename: str, authed: bool, head: bool) -> None:
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None or (repo.private and not authed):
            return self._error(401 if not authed else 404, "Repository not found", "RepoNotFound", head)
        snap = repo.snapshot(revision)
        if snap is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound", head)
        sha, files = snap
        if filename not in files:
            return self._error(404, "Entry not found", "EntryNotFound", head)
        data = files[filename]
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start = min(int(m.group(1)), len(data))
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha1(data)}"',
                   "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if start else 200, data[start:], headers, head)


def point_huggingface_hub_at(monkeypatch, url: str, tmp_path) -> None:
    """Aim huggingface_hub in this process at `url`. It reads HF_ENDPOINT and HF_HUB_OFFLINE at
    import time, so its constants are patched (and restored by monkeypatch); a fresh cache and no
    stored login keep the developer's own ~/.cache/huggingface out of the test."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "ENDPOINT", url)
    monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # CI sets HF_HUB_OFFLINE=1 for everything else
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
