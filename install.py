"""Install the packages FlowSR needs that this Python lacks, and change nothing else.

AUTOMATIC1111 and Forge run this file at every start (with their own folder on PYTHONPATH, so ``launch``
imports); ComfyUI-Manager runs it after installing the pack. Installed packages are never upgraded or
downgraded, whatever their version: pip runs with every installed distribution pinned as a constraint, so it
can only add. torch, transformers, accelerate and safetensors belong to the host and are never installed
from here. Prints nothing when there is nothing to do.
"""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare Python; pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

REQUIREMENTS_FILE = Path(__file__).resolve().with_name("requirements.txt")
HOST_OWNED = {"torch", "torchvision", "transformers", "accelerate", "safetensors"}
#: What a missing package is installed as beside A1111 1.10 / Forge's pins (transformers 4.30.2, accelerate
#: 0.21.0): pip would pick newer releases that declare compatibility but fail to import there.
A1111_RELEASES = {"diffusers": "0.31.0", "peft": "0.13.2"}


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan(requirements: Iterable[Requirement],
         is_installed: Callable[[str], bool]) -> tuple[list[Requirement], list[str]]:
    """(requirements to install, notes for the user); an installed package is only ever reported on."""
    missing, notes = [], []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if not is_installed(requirement.name):
            if name in HOST_OWNED:
                notes.append(f"{requirement.name} is missing; install it as your UI's install guide says "
                             "(FlowSR leaves it to the host)")
            else:
                missing.append(requirement)
            continue
        version = installed_version(requirement.name)
        if version is not None and not requirement.specifier.contains(version, prereleases=True):
            notes.append(f"{requirement.name} {version} is installed and FlowSR wants {requirement}; it is left "
                         f"as it is, since the host may rely on it. If FlowSR fails, run: pip install \"{requirement}\"")
    return missing, notes


def install_spec(requirement: Requirement, a1111: bool) -> str:
    name = canonicalize_name(requirement.name)
    if a1111 and name in A1111_RELEASES:
        return f"{requirement.name}=={A1111_RELEASES[name]}"
    return str(requirement)


def write_constraints(folder: str) -> str:
    """A pip constraints file pinning every installed distribution at its version: pip may only add."""
    pins = sorted({f"{canonicalize_name(d.metadata['Name'])}=={d.version}"
                   for d in importlib.metadata.distributions() if d.metadata["Name"] and d.version})
    path = Path(folder) / "installed.txt"
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return str(path)


def main() -> int:
    try:
        import launch  # A1111 / Forge: use their installer, which honours --skip-install and INDEX_URL
    except ImportError:
        launch = None
    is_installed = launch.is_installed if launch is not None else (lambda name: installed_version(name) is not None)
    missing, notes = plan(read_requirements(), is_installed)
    for note in notes:
        print(f"[FlowSR] {note}")
    if not missing:
        return 0
    specs = [install_spec(requirement, a1111=launch is not None) for requirement in missing]
    with tempfile.TemporaryDirectory() as folder:
        constraints = write_constraints(folder)
        if launch is not None:
            quoted = " ".join(f'"{spec}"' for spec in specs)
            launch.run_pip(f'install {quoted} -c "{constraints}"', desc=f"FlowSR requirements: {', '.join(specs)}")
            return 0
        print(f"[FlowSR] installing {', '.join(specs)}")
        command = [sys.executable, "-m", "pip", "install", *specs, "-c", constraints]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
