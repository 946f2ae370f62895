"""Click options for reaching hosts over SSH, shared by `run`, `launch` and friends (same flags as OpenSSH).

    @click.command()
    @ssh_options
    def run(ssh: SshOptions) -> int: ...      # --ssh-config, --ssh-option, --user, --port, --connect-timeout
    ssh_argv(ssh)                             # the same options as command-line words, for a command run elsewhere

The five options arrive as ONE keyword argument, `ssh` (an orchestrator.remote.SshOptions, validated: bad
input is a ConfigError, exit 2, before anything connects).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import click

__all__ = ["ssh_argv", "ssh_options"]

_NAMES = ("ssh_config", "ssh_option", "user", "port", "connect_timeout")


def ssh_options(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from orchestrator.remote.ssh import SshOptions  # asyncssh: only when the command runs

        config, options, user, port, timeout = (kwargs.pop(n) for n in _NAMES)
        ssh = SshOptions(config=config, options=tuple(options), user=user, port=port, connect_timeout=timeout)
        return command(*args, ssh=ssh, **kwargs)

    options = [
        click.option("--ssh-config", metavar="FILE", help="OpenSSH client config (like ssh -F; default ~/.ssh/config)."),
        click.option("-o", "--ssh-option", multiple=True, metavar="KEY=VALUE",
                     help="OpenSSH option (like ssh -o), repeatable; wins over the config file. Host keys stay "
                          "checked unless you pass StrictHostKeyChecking=no (or accept-new)."),
        click.option("-l", "--user", metavar="USER", help="Remote user (like ssh -l)."),
        click.option("--port", type=int, metavar="PORT", help="Remote SSH port (like ssh -p)."),
        click.option("--connect-timeout", type=float, metavar="SECONDS",
                     help="Seconds to connect and authenticate per host (default: the config's, else 10)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def ssh_argv(ssh) -> list[str]:
    """The options of an SshOptions as words for another orchestrator command (the config file made absolute:
    that command may start in another directory)."""
    words = ["--ssh-config", os.path.abspath(ssh.config)] if ssh.config else []
    for option in ssh.options:
        words += ["--ssh-option", option]
    for flag, value in (("--user", ssh.user), ("--port", ssh.port), ("--connect-timeout", ssh.connect_timeout)):
        if value is not None:
            words += [flag, str(value)]
    return words
