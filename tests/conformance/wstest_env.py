"""The Python 2.7 virtualenv that holds Autobahn|Testsuite (``wstest``).

``autobahntestsuite`` runs on Python 2 only, so it lives in its own virtualenv at
``<repo>/.venv-wstest`` (gitignored), created on first use and reused afterwards. Creation is
serialised with a file lock, so parallel test runs neither race nor install twice.

Python 2.7 is looked up in ``$PULSEWIRE_PYTHON27``, then ``python2.7``/``python2`` on ``PATH``,
then pyenv's versions. Without it the conformance tests are skipped with a visible reason, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".venv-wstest"
#: Pinned so that case ids and totals (517 cases for "*") stay stable.
AUTOBAHNTESTSUITE = "autobahntestsuite==25.10.1"
#: The last virtualenv release that still creates Python 2.7 environments is below 20.22.
VIRTUALENV = "virtualenv<20.22"
#: Written last, so a half-built virtualenv (interrupted install) is detected and rebuilt.
MARKER = VENV_DIR / ".pulsewire-wstest-ok"
INSTALL_TIMEOUT = 900.0


class WstestSetupError(RuntimeError):
    """The wstest virtualenv could not be created."""


def _is_python27(executable: str) -> bool:
    """Whether ``executable`` runs and is CPython 2.7 (pyenv shims that fail are rejected)."""
    try:
        out = subprocess.run(
            [executable, "-c", "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "2.7"


def _candidates() -> Iterator[str]:
    """Possible Python 2.7 interpreters, best first."""
    explicit = os.environ.get("PULSEWIRE_PYTHON27")
    if explicit:
        yield explicit
    for name in ("python2.7", "python2"):
        found = shutil.which(name)
        if found:
            yield found
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    for root in dict.fromkeys(r for r in roots if r):
        yield from sorted(
            glob.glob(os.path.join(root, "versions", "2.7*", "bin", "python")), reverse=True
        )
    yield from ("/usr/bin/python2.7", "/usr/local/bin/python2.7")


def find_python27() -> Path | None:
    """Return a working Python 2.7 interpreter, or None."""
    for candidate in _candidates():
        if _is_python27(candidate):
            return Path(candidate)
    return None


def _run(cmd: Sequence[str | os.PathLike[str]], what: str) -> None:
    """Run an installation step, raising WstestSetupError with its output on failure."""
    try:
        proc = subprocess.run(
            [os.fspath(c) for c in cmd],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WstestSetupError(f"{what}: timed out after {INSTALL_TIMEOUT:g} s") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-4000:]
        raise WstestSetupError(f"{what} failed (exit {proc.returncode}):\n{output}")


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a file in the temp dir keyed by ``path``."""
    key = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"pulsewire-wstest-{key}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create(python27: Path) -> None:
    """Build the virtualenv from scratch (caller holds the lock)."""
    shutil.rmtree(VENV_DIR, ignore_errors=True)
    if not _can_import(python27, "virtualenv"):
        _run([python27, "-m", "pip", "install", "-q", VIRTUALENV], "installing virtualenv")
    _run([python27, "-m", "virtualenv", "-q", VENV_DIR], "creating the wstest virtualenv")
    _run(
        [VENV_DIR / "bin" / "pip", "install", "-q", AUTOBAHNTESTSUITE],
        "installing autobahntestsuite",
    )
    _run([VENV_DIR / "bin" / "wstest", "--autobahnversion"], "checking wstest")
    MARKER.write_text(AUTOBAHNTESTSUITE + "\n")


def _can_import(python: Path, module: str) -> bool:
    """Whether ``python`` can import ``module``."""
    try:
        proc = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _ready() -> bool:
    """Whether a complete virtualenv for the pinned version already exists."""
    try:
        return MARKER.read_text().strip() == AUTOBAHNTESTSUITE and wstest_path().exists()
    except OSError:
        return False


def wstest_path() -> Path:
    """Where the ``wstest`` script lives (it may not exist yet)."""
    return VENV_DIR / "bin" / "wstest"


def venv_python() -> Path:
    """The virtualenv's Python 2.7 interpreter."""
    return VENV_DIR / "bin" / "python"


def ensure_wstest() -> Path:
    """Return the path of ``wstest``, creating the virtualenv if needed.

    Skips the calling test when Python 2.7 is missing (fails instead when ``CI=true``);
    fails when the installation itself fails.
    """
    if _ready():
        return wstest_path()
    with _lock(VENV_DIR):
        if _ready():  # another process built it while we waited
            return wstest_path()
        python27 = find_python27()
        if python27 is None:
            reason = (
                "Autobahn|Testsuite needs Python 2.7, which was not found "
                "(set PULSEWIRE_PYTHON27, or install it, e.g. `pyenv install 2.7.18`)"
            )
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        try:
            _create(python27)
        except WstestSetupError as exc:
            pytest.fail(f"cannot set up wstest in {VENV_DIR}: {exc}")
    return wstest_path()


_RESOLVE_CASES = """
import json, sys
from autobahntestsuite.case import (Cases, CaseBasename, CaseCategories,
                                    CaseSetname, CaseSubCategories)
from autobahntestsuite.caseset import CaseSet
spec = json.loads(sys.stdin.read())
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
ids = cs.parseSpecCases(spec)
unknown = [cid for cid in ids if cid not in cs.CasesById]
if unknown:
    sys.stderr.write("no such cases: %s\\n" % ", ".join(unknown))
    sys.exit(3)
out = [[cid, cs.caseClassToPrettyDescription(cs.CasesById[cid])] for cid in ids]
sys.stdout.write(json.dumps(out))
"""


def resolve_cases(cases: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, str]:
    """Ask the installed suite which case ids a spec selects, with their short descriptions.

    Uses the suite's own pattern matching (``CaseSet.parseSpecCases``), in suite order.
    """
    spec = json.dumps({"cases": list(cases), "exclude-cases": list(exclude)})
    proc = subprocess.run(
        [venv_python(), "-c", _RESOLVE_CASES],
        input=spec,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise WstestSetupError(f"resolving the case list failed:\n{proc.stderr[-4000:]}")
    return {case_id: description for case_id, description in json.loads(proc.stdout)}
