"""Ansible inventories from our host sets: the one a run uses, and the gated one written after validation.

    from orchestrator.provision.inventory import build_inventory, inventory_hosts
    inv = build_inventory(resolve_hosts(hosts="node[1-4]"), ssh_args=["-F", "sandbox/ssh_config"])
    # {"all": {"hosts": {"node1": {"gpu_slots": 1}, ...},
    #          "vars": {"ansible_python_interpreter": "/usr/bin/python3", "ansible_ssh_common_args": "-F sandbox/ssh_config"}}}
    yaml.safe_dump(inv)          # what ansible-runner / ansible-playbook -i read
    inventory_hosts("inventory.yml")   # the HostList an existing YAML/INI inventory names (for the gate and the summary)

Host names were checked by orchestrator.hosts (DNS names or IPv4 only), so they are safe as inventory keys;
ssh arguments are quoted once, here, for ansible's `ssh_common_args` (which ansible splits with shlex); they
come from the shared --ssh-config/-o/--user/--port/--connect-timeout options (ssh_args_from).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.hosts import Host, HostList

__all__ = ["ssh_args_from", "build_inventory", "inventory_hosts", "write_inventory"]

DEFAULT_PYTHON = "/usr/bin/python3"


def ssh_args_from(ssh) -> tuple[list[str], dict[str, Any]]:
    """An orchestrator.remote.ssh.SshOptions -> (ssh arguments, inventory vars): -F/-o flags, ansible_user/port."""
    args = ["-F", ssh.config] if ssh.config else []
    for option in ssh.options:
        args += ["-o", option]
    if ssh.connect_timeout is not None:
        args += ["-o", f"ConnectTimeout={max(int(ssh.connect_timeout), 1)}"]
    host_vars = {k: v for k, v in (("ansible_user", ssh.user), ("ansible_port", ssh.port)) if v is not None}
    return args, host_vars


def build_inventory(hosts: HostList, *, ssh_args: Sequence[str] = (), python: str = DEFAULT_PYTHON,
                    extra_vars: Mapping[str, Any] | None = None) -> dict:
    """A YAML-able inventory: every host in group `all` with its slot count, ssh options in group vars."""
    if not hosts:
        raise ConfigError("--hosts", "", "no hosts to install; give at least one")
    group_vars: dict[str, Any] = {"ansible_python_interpreter": python}
    if ssh_args:
        group_vars["ansible_ssh_common_args"] = shlex.join(ssh_args)
    group_vars.update(extra_vars or {})
    return {"all": {"hosts": {h.name: {"gpu_slots": h.slots} for h in hosts}, "vars": group_vars}}


def write_inventory(inventory: dict, path: str | os.PathLike) -> Path:
    import yaml

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return out


def inventory_hosts(path: str | os.PathLike) -> HostList:
    """Hosts of an existing inventory, in file order, via ansible's own inventory parser (any format it reads)."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    if not Path(path).exists():
        raise ConfigError("--inventory", os.fspath(path), "give an existing Ansible inventory file")
    manager = InventoryManager(loader=DataLoader(), sources=[os.fspath(path)])
    hosts = HostList(Host(h.name, max(int(h.vars.get("gpu_slots", 1)), 1)) for h in manager.get_hosts())
    if not hosts:
        raise ConfigError("--inventory", os.fspath(path), "it names no hosts")
    return hosts
