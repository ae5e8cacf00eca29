"""The image installs exactly what the README's set-up installs: the same requirements, through the same
make targets, as a non-root user, with the run store on a volume and a health check on Streamlit's
endpoint. (The image itself is built and run by hand where a Docker daemon can pull or make a base;
see the README's Docker section. These checks keep the Dockerfile and the Makefile in step.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _makefile_pip_requirements() -> list[str]:
    make = (ROOT / "Makefile").read_text()
    lines = [ln for ln in make.splitlines() if "pip install" in ln and " -r " in ln]
    assert len(lines) == 1, lines
    return re.findall(r"-r\s+(\S+)", lines[0])


def test_image_installs_the_makefiles_requirements_then_runs_make_venv():
    runs = [rest for word, rest in _instructions() if word == "RUN"]
    reqs = _makefile_pip_requirements()
    assert reqs == ["requirements.txt", "requirements-dev.txt"]
    pip = [r for r in runs if " -r " in r]
    assert len(pip) == 1 and re.findall(r"-r\s+(\S+)", pip[0]) == reqs
    copies = [rest for word, rest in _instructions() if word == "COPY"]
    assert any(all(r in c.split() for r in reqs) for c in copies), "requirements copied before they are installed"
    assert any(shlex.split(r) == ["make", "venv"] for r in runs), "the project is installed by the Makefile's target"
    # every requirement file exists and pins torch in the same file the pip command reads
    text = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==\d", text, re.M) and re.search(r"^torchvision==\d", text, re.M)


def test_image_runs_as_a_user_with_the_store_on_a_volume_and_a_health_check():
    ins = _instructions()
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(rest for word, rest in ins if word == "ENV")
    home = re.search(r"FAIRPRUNE_HOME=(\S+)", env).group(1)
    volumes = [rest for word, rest in ins if word == "VOLUME"]
    assert volumes and home in volumes[-1]
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    port = re.search(r"^PORT\s*\?=\s*(\d+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert health and f"127.0.0.1:{port}/_stcore/health" in health[-1]
    assert [rest for word, rest in ins if word == "EXPOSE"] == [port]
    cmd = [rest for word, rest in ins if word == "CMD"]
    assert cmd == ['["make", "run"]']


def test_build_context_leaves_out_the_local_environment():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", "tests/artifacts", ".fairprune-home"):
        assert path in ignored
