"""Two commands on a fresh machine: ``bash .ci/dashboard`` and ``bash .ci/test`` each do their own set-up.

Static checks (the scripts exist, are executable bash that parses, ``.ci/run`` calls ``.ci/test``, the
README shows exactly these commands and names the Debian packages), plus a run of both scripts in a
copy of the repository with a stand-in ``python3`` that only records what it is asked to do: the first
run creates the virtual environment and installs the requirements, the second reuses it, a changed
requirements.txt installs again. Nothing is installed for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci"
SCRIPTS = ("dashboard", "test", "run")
DEB = ("dataset-fashion-mnist", "chromium")

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not installed")


def test_scripts_exist_are_executable_and_parse():
    for name in (*SCRIPTS, "_setup.sh"):
        path = CI / name
        assert path.is_file(), path
        subprocess.run([BASH, "-n", str(path)], check=True, timeout=30)
    for name in SCRIPTS:
        path = CI / name
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), path
        assert "set -euo pipefail" in path.read_text()


def test_ci_run_calls_the_test_script():
    text = (CI / "run").read_text()
    assert re.search(r'^exec bash "\$\(dirname "\$0"\)/test"', text, re.M), text
    test = (CI / "test").read_text()
    assert "python -m pytest -q" in test and all(p in test for p in DEB) and "apt-get install" in test
    assert "streamlit run app.py" in (CI / "dashboard").read_text()


def test_readme_set_up_is_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert [b.strip() for b in blocks] == ["bash .ci/dashboard", "bash .ci/test"], blocks
    assert all(p in setup for p in DEB)  # the Debian packages the tests use are named
    assert "pip install" not in setup and "python3 -m venv" not in setup  # nothing else to type


@pytest.fixture
def sandbox(tmp_path):
    """A copy of .ci/, requirements.txt and pyproject.toml, and a stand-in python3 that logs its calls."""
    repo = tmp_path / "repo"
    shutil.copytree(CI, repo / ".ci")
    for f in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / f, repo / f)
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin"
    fake.mkdir()
    python = fake / "python3"
    # `python3 -m venv DIR` makes DIR/bin/python: this same script (it logs and succeeds)
    python.write_text(f"""#!{BASH}
echo "$(basename "$0") $*" >> {log}
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/python3"; fi
case "$*" in *"import lrviz"*) exit 1;; esac  # lrviz is not installed yet
exit 0
""")
    python.chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "LRVIZ_SKIP_APT": "1"}
    return repo, log, env


def _run(repo, env, script, *args):
    p = subprocess.run([BASH, str(repo / ".ci" / script), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p


def _calls(log: Path) -> list[str]:
    calls = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return calls


def test_scripts_set_up_once_then_reuse_the_environment(sandbox):
    repo, log, env = sandbox
    _run(repo, env, "test", "-k", "nothing")
    first = _calls(log)
    assert "python3 -m venv .venv" in first
    assert "python -m pip install -q -r requirements.txt" in first and "python -m pip install -q --no-deps -e ." in first
    assert first[-1] == "python -m pytest -q -k nothing"  # the venv's python runs the tests
    assert (repo / ".venv" / ".lrviz-setup").is_file()
    _run(repo, env, "run")  # CI: the same script, set up already
    assert _calls(log) == ["python -m pytest -q"]
    _run(repo, env, "dashboard", "--server.port", "8600")
    assert _calls(log) == ["python -m streamlit run app.py --server.port 8600"]
    with open(repo / "requirements.txt", "a") as f:  # new requirements: installed again, the venv kept
        f.write("# changed\n")
    _run(repo, env, "dashboard")
    again = _calls(log)
    assert "python -m pip install -q -r requirements.txt" in again and not any("venv" in c for c in again)


def test_test_script_warns_and_continues_without_apt(sandbox):
    repo, log, env = sandbox
    env = {k: v for k, v in env.items() if k != "LRVIZ_SKIP_APT"}
    bare = repo.parent / "bare"  # no dpkg, no apt-get: just the coreutils the script uses
    bare.mkdir()
    for tool in ("cat", "sha256sum", "cut", "mkdir", "cp", "id", "basename", "dirname"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bare / tool)
    env["PATH"] = f"{repo.parent / 'bin'}:{bare}"
    p = _run(repo, env, "test")
    assert "warning: Debian packages dataset-fashion-mnist chromium are not installed" in p.stderr
    assert _calls(log)[-1] == "python -m pytest -q"
