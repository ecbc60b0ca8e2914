"""Test sessions over the range of torch versions metamodal declares (run before a release).

``pyproject.toml`` declares torch as a range (``torch>=LOWEST``), so that a machine with its own
torch build (every GPU machine with its CUDA build) installs metamodal without pip replacing
it; ``constraints.txt`` holds the exact version that CI and the README's commands install.
The suite must pass at both ends of the range:

    pip install nox
    nox -s pinned     # torch from constraints.txt (what CI runs)
    nox -s lowest     # the lowest torch pyproject.toml declares
    nox -s lowest -- tests/test_task_batching.py   # arguments after -- go to pytest

The lowest torch comes from PyPI, whose Linux wheels depend on NVIDIA's CUDA packages
(several GB to download); the pinned one is the CPU build ``constraints.txt`` names.
"""

from __future__ import annotations

import re
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
nox.options.sessions = ["pinned"]


def declared_lowest() -> str:
    """The lower bound of torch in ``pyproject.toml``'s dependencies (``torch>=X``)."""
    found = re.search(r'"torch>=([0-9][0-9.]*)"', (ROOT / "pyproject.toml").read_text())
    if found is None:
        raise SystemExit("pyproject.toml declares no torch>=X dependency")
    return found.group(1)


def pinned_version() -> str:
    """The exact torch version of ``constraints.txt`` (``torch==X``)."""
    found = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M)
    if found is None:
        raise SystemExit("constraints.txt pins no torch==X")
    return found.group(1)


def _check_torch(session: nox.Session, version: str) -> None:
    """Fail unless the session's environment imports torch ``version`` (``2.4`` is
    ``2.4.0``)."""
    code = ("import sys, torch\n"
            "def key(v):\n"
            "    parts = [int(x) for x in v.split('+')[0].split('.')]\n"
            "    while parts and parts[-1] == 0:\n"
            "        parts.pop()\n"
            "    return parts\n"
            f"sys.exit(0 if key(torch.__version__) == key({version!r}) else "
            f"'torch ' + torch.__version__ + ', not {version}')")
    session.run("python", "-c", code)


@nox.session(python="3.11")
def pinned(session: nox.Session) -> None:
    """The whole suite on the torch of ``constraints.txt``."""
    version = pinned_version()
    session.install("-c", "constraints.txt", f"torch=={version}", "-e", ".[test]")
    _check_torch(session, version)
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lowest(session: nox.Session) -> None:
    """The whole suite on the lowest torch ``pyproject.toml`` declares."""
    version = declared_lowest()
    session.install(f"torch=={version}")
    session.install(f"torch=={version}", "-e", ".[test]")
    _check_torch(session, version)
    session.run("python", "-m", "pytest", "-q", *session.posargs)
