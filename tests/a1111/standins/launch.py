"""Stand-in for A1111's launch.py (v1.10.1), which re-exports modules/launch_utils.py.

Checked: ``is_installed(package)`` is True when importlib.metadata knows the distribution, or else when
importlib.util.find_spec finds a module of that name; ``run_pip(command, desc=None, live=...)`` runs
``python -m pip {command} --prefer-binary`` (plus --index-url when set), returns nothing with
--skip-install, and raises RuntimeError when pip fails. Here it records the commands instead of running pip.
"""
import importlib.metadata
import importlib.util
from types import SimpleNamespace

args = SimpleNamespace(skip_install=False)
pip_commands = []


def is_installed(package):
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            return False
    return True


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return None
    pip_commands.append(command)
    return ""
