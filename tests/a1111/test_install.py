"""install.py and requirements.txt, shared by A1111 / Forge (which run install.py at every start) and
ComfyUI-Manager (which pip-installs requirements.txt line by line, then runs install.py). pip is mocked."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
#: A1111 1.10.1's pins (requirements_versions.txt) for what FlowSR also uses.
A1111_ENV = {"torch": "2.1.2", "transformers": "4.30.2", "accelerate": "0.21.0", "safetensors": "0.4.2",
             "huggingface-hub": "0.36.2", "numpy": "1.26.2", "pillow": "9.5.0", "psutil": "5.9.5",
             "tqdm": "4.66.1"}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def install():
    return load(REPO / "install.py", "flowsr_install")


def environment(install, monkeypatch, versions: dict) -> None:
    """Make ``versions`` the installed distributions, as importlib.metadata reports them."""
    canonical = {install.canonicalize_name(name): version for name, version in versions.items()}
    monkeypatch.setattr(install, "installed_version", lambda name: canonical.get(install.canonicalize_name(name)))
    monkeypatch.setattr(install.importlib.metadata, "distributions", lambda: [
        SimpleNamespace(metadata={"Name": name}, version=version) for name, version in versions.items()])


# ------------------------------------------------------------------------------------ requirements.txt


def test_requirements_file_is_one_package_a_line_without_torch_and_matches_pyproject(install):
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip()]
    requirements = install.read_requirements()
    assert len(requirements) == len(lines), "one requirement per line, no options or continuations"
    names = {install.canonicalize_name(r.name) for r in requirements}
    assert not names & {"torch", "torchvision", "torchaudio"}, "ComfyUI-Manager refuses torch; hosts bring their own"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {str(r) for r in map(install.Requirement, project) if install.canonicalize_name(r.name) != "torch"}
    assert {str(r) for r in requirements} == expected


# ---------------------------------------------------------------------------------------- decisions


def test_nothing_to_do_in_a_complete_environment(install, monkeypatch):
    environment(install, monkeypatch, {**A1111_ENV, "diffusers": "0.31.0", "peft": "0.13.2", "pypng": "0.20220715.0"})
    missing, notes = install.plan(install.read_requirements(), lambda name: install.installed_version(name) is not None)
    assert (missing, notes) == ([], [])


def test_installs_only_what_is_missing(install, monkeypatch):
    environment(install, monkeypatch, A1111_ENV)
    missing, notes = install.plan(install.read_requirements(), lambda name: install.installed_version(name) is not None)
    assert [r.name for r in missing] == ["diffusers", "peft", "pypng"] and notes == []


def test_host_owned_packages_are_never_installed(install, monkeypatch):
    environment(install, monkeypatch, {k: v for k, v in A1111_ENV.items() if k != "transformers"})
    missing, notes = install.plan(install.read_requirements(), lambda name: install.installed_version(name) is not None)
    assert "transformers" not in [r.name for r in missing]
    assert any(note.startswith("transformers is missing") for note in notes)


def test_too_old_packages_are_reported_not_upgraded(install, monkeypatch):
    """Forge pinned diffusers 0.25.0: FlowSR says so and what would update it, and changes nothing."""
    environment(install, monkeypatch, {**A1111_ENV, "diffusers": "0.25.0", "peft": "0.13.2", "pypng": "0.20220715.0"})
    missing, notes = install.plan(install.read_requirements(), lambda name: install.installed_version(name) is not None)
    assert missing == []
    (note,) = notes
    assert "diffusers 0.25.0 is installed" in note and 'pip install "diffusers>=0.31.0"' in note


# ------------------------------------------------------------------------------------------ running pip


def test_a1111_installs_its_known_good_releases_through_launch_run_pip(install, monkeypatch, capsys):
    environment(install, monkeypatch, A1111_ENV)
    launch = load(STANDINS / "launch.py", "launch")
    monkeypatch.setattr(launch, "is_installed", lambda name: install.installed_version(name) is not None)
    constraints = []
    monkeypatch.setattr(launch, "run_pip", lambda command, desc=None, live=False: constraints.append(
        (command, Path(command.split('-c "')[1].rstrip('"')).read_text().split())))
    monkeypatch.setitem(sys.modules, "launch", launch)
    assert install.main() == 0
    ((command, pins),) = constraints
    assert command.startswith('install "diffusers==0.31.0" "peft==0.13.2" "pypng" -c "')
    assert {"torch==2.1.2", "transformers==4.30.2", "accelerate==0.21.0", "safetensors==0.4.2"} <= set(pins)
    assert capsys.readouterr().out == ""


def test_elsewhere_pip_adds_the_missing_packages_without_changing_installed_ones(install, monkeypatch):
    environment(install, monkeypatch, {**A1111_ENV, "transformers": "4.57.1", "peft": "0.17.0",
                                       "pypng": "0.20220715.0"})
    monkeypatch.setitem(sys.modules, "launch", None)  # `import launch` fails: not A1111
    runs = []

    def run(command, check):
        runs.append((command, Path(command[-1]).read_text().split()))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(install.subprocess, "run", run)
    assert install.main() == 0
    ((command, pins),) = runs
    assert command[:6] == [sys.executable, "-m", "pip", "install", "diffusers>=0.31.0", "-c"]
    assert "transformers==4.57.1" in pins and "peft==0.17.0" in pins


def test_no_pip_when_nothing_is_missing(install, monkeypatch, capsys):
    environment(install, monkeypatch, {**A1111_ENV, "diffusers": "0.31.0", "peft": "0.13.2", "pypng": "0.20220715.0"})
    monkeypatch.setitem(sys.modules, "launch", None)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("pip ran"))
    assert install.main() == 0
    assert capsys.readouterr().out == ""


def test_runs_as_a_script_in_this_environment():
    done = subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
