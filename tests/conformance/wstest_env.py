"""Autobahn|Testsuite's ``wstest`` in a Python 2.7 virtualenv of its own, built once and cached.

autobahntestsuite 0.8.2 (the last release) runs only on Python 2.7, on the Twisted and
autobahn of its day. The virtualenv is made with virtualenv 16 (the last to run on 2.7, its
pip 20.3.4 and setuptools 44.1.1 bundled) and every package is pinned (``PINS``: the set that
pip resolved for autobahntestsuite 0.8.2 under 2.7, checked to run the whole fuzzing client),
so a rerun in a year installs the same thing. It lives outside the checkout, in
``$XDG_CACHE_HOME/tidings/autobahn-<key>`` (``~/.cache`` by default), the key a digest of the
pins and of the interpreter; building it takes under a minute (a few C extensions are compiled),
using it no time.

Python 2.7 is found as ``$TIDINGS_PYTHON2``, else ``python2.7`` on the ``PATH``, else the newest
2.7 under pyenv (``$PYENV_ROOT``, by default ``~/.pyenv``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

VIRTUALENV = "virtualenv==16.7.12"

#: autobahntestsuite 0.8.2 and everything it needs under Python 2.7, pinned
PINS = (
    "autobahntestsuite==0.8.2",
    "autobahn==0.10.9",
    "txaio==2.1.0",
    "Twisted==20.3.0",
    "attrs==21.4.0",
    "Automat==22.10.0",
    "constantly==15.1.0",
    "hyperlink==21.0.0",
    "incremental==22.10.0",
    "PyHamcrest==1.10.1",
    "zope.interface==5.5.2",
    "klein==20.6.0",
    "Tubes==0.2.1",
    "Werkzeug==1.0.1",
    "Jinja2==2.11.3",
    "MarkupSafe==1.1.1",
    "pyOpenSSL==21.0.0",
    "cryptography==3.3.2",
    "cffi==1.15.1",
    "pycparser==2.21",
    "enum34==1.1.10",
    "ipaddress==1.0.23",
    "idna==2.10",
    "service-identity==21.1.0",
    "pyasn1==0.5.1",
    "pyasn1-modules==0.3.0",
    "six==1.17.0",
    "typing==3.10.0.0",
    "unittest2==1.1.0",
    "linecache2==1.0.0",
    "traceback2==1.4.0",
    "ujson==2.0.3",
    "wsaccel==0.6.6",
)


class WstestUnavailable(Exception):
    """No Python 2.7 here, or the virtualenv could not be built (no index, no compiler)."""


def find_python2() -> Path:
    """A Python 2.7 interpreter (see the module's docstring for where it is looked for)."""
    candidates: list[Path] = []
    if os.environ.get("TIDINGS_PYTHON2"):
        candidates.append(Path(os.environ["TIDINGS_PYTHON2"]))
    on_path = shutil.which("python2.7")
    if on_path:
        candidates.append(Path(on_path))
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    versions = sorted(
        pyenv.glob("2.7*/bin/python2.7"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parts[-3].split(".")],
        reverse=True,
    )
    candidates.extend(versions)
    for candidate in candidates:
        version, executable = _identify(candidate)
        if version.startswith("2.7."):
            return Path(executable)  # the interpreter itself, not a pyenv shim
    raise WstestUnavailable(
        "no Python 2.7 found for Autobahn|Testsuite (looked at $TIDINGS_PYTHON2, python2.7 on "
        f"the PATH and {pyenv}/2.7*); install one, e.g. `pyenv install 2.7.18`"
    )


def cache_dir(python2: Path) -> Path:
    """Where the virtualenv for ``python2`` and ``PINS`` lives."""
    identity = "\n".join((str(python2.resolve()), *_identify(python2), VIRTUALENV, *PINS))
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tidings" / f"autobahn-{key}"


def ensure_wstest() -> Path:
    """The ``wstest`` script of the cached virtualenv, built first if it is not there.

    Raises:
        WstestUnavailable: no Python 2.7, or building the virtualenv failed (the message has
            the tail of the failing command's output).
    """
    python2 = find_python2()
    home = cache_dir(python2)
    wstest = home / "venv" / "bin" / "wstest"
    done = home / "complete"
    home.parent.mkdir(parents=True, exist_ok=True)
    with _locked(home.parent / f"{home.name}.lock"):
        if done.exists() and wstest.exists():
            return wstest
        if home.exists():  # a build that did not finish
            shutil.rmtree(home)
        home.mkdir()
        boot = home / "bootstrap"
        venv = home / "venv"
        requirements = home / "requirements.txt"
        requirements.write_text("\n".join(PINS) + "\n")
        _run([str(python2), "-m", "pip", "install", "--target", str(boot), VIRTUALENV])
        _run(
            [str(python2), "-m", "virtualenv", "--no-download", str(venv)],
            PYTHONPATH=str(boot),
        )
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-r", str(requirements)])
        _run([str(wstest), "--help"])
        done.write_text("\n".join(PINS) + "\n")
    return wstest


def python2_environment(**extra: str) -> dict[str, str]:
    """The environment for Python 2.7 processes: nothing of the Python 3 one leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    env.update(
        PYTHONWARNINGS="ignore",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_PYTHON_VERSION_WARNING="1",
        PIP_NO_INPUT="1",
    )
    env.update(extra)
    return env


def _identify(python: Path) -> tuple[str, str]:
    """``python``'s version and the path of the interpreter it runs (``("", "")`` if it does
    not run)."""
    try:
        result = subprocess.run(
            [
                str(python),
                "-c",
                "import platform, sys; print(platform.python_version()); print(sys.executable)",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=python2_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", ""
    lines = result.stdout.splitlines()
    return (lines[0], lines[1]) if result.returncode == 0 and len(lines) == 2 else ("", "")


def _run(command: list[str], **env: str) -> None:
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env=python2_environment(**env),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WstestUnavailable(f"{' '.join(command)}: {exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise WstestUnavailable(
            f"{' '.join(command)} exited with {result.returncode}:\n" + "\n".join(output[-30:])
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock: two test runs never build the same virtualenv at once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


if __name__ == "__main__":
    print(ensure_wstest())
