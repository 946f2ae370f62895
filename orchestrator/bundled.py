"""The files this package ships for tools other than Python (Ansible playbooks, Slurm launchers), and copies of them.

    from orchestrator import bundled
    bundled.path("playbooks") / "install.yml"          # a real directory: in a checkout and in an installed wheel
    bundled.export("launchers", "launchers", force=False, option="--export-launchers")   # a copy to edit

They live in orchestrator/data/ (in a checkout, relative symlinks to the top-level playbooks/ and launchers/,
which setuptools follows when it builds the wheel and the sdist), so commands find them through
importlib.resources wherever the package was installed from.
"""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path

from orchestrator.errors import ConfigError, OrchestratorError

NAMES = ("playbooks", "launchers")


def path(name: str) -> Path:
    """The directory of bundled `name` (one of NAMES), resolved to a real filesystem path."""
    if name not in NAMES:
        raise ValueError(f"no bundled {name!r}: one of {NAMES}")
    found = files("orchestrator") / "data" / name
    # ansible-playbook and sbatch need a real path; pip never installs a package zipped, so files() is a Path.
    return Path(os.fspath(found)).resolve()


def export(name: str, dest: str | os.PathLike, *, force: bool, option: str) -> Path:
    """Copy bundled `name` to `dest` (modes kept: srun-torchrun stays executable); return `dest`.

    An existing non-empty `dest` is a ConfigError naming `option` unless `force` (then files are overwritten,
    others there are left alone).
    """
    target = Path(dest)
    if target.exists() and not target.is_dir():
        raise ConfigError(option, os.fspath(target), "give a directory (this is a file)")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ConfigError(option, os.fspath(target), "not empty: give a new or empty directory, or add --force")
    source = path(name)
    if not source.is_dir():  # a build from a copy of orchestrator/ alone: its data/ symlinks pointed nowhere
        raise OrchestratorError(f"this installation has no bundled {name} ({source}): reinstall it from a wheel or "
                                f"a checkout that has {name}/")
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
