"""Install benchmark: wall time of `orchestrator install` on 4 and 16 namespace hosts, forks and pipelining compared,
and the anchor (plain ansible-playbook, same inventory and settings) side by side.

    $ sudo .venv/bin/python bench/install.py                         # hosts 4,16; forks 4,16; pipelining on/off
    $ sudo .venv/bin/python bench/install.py --hosts 4 --rounds 3                # rerun matrix 3x, interleaved

What is measured (all on one sandbox of 4 + 16 fresh hosts with private /etc /opt /usr /var, packages from a
local mirror on the sandbox bridge, as in tests/integration/test_install.py):
  fresh     the first install of --tags on fresh hosts (real apt installs), orchestrator defaults (forks 16,
            pipelining on); one run per host count, since a host is fresh only once.
  rerun     the same playbook again on the installed hosts (the idempotent "converge" run, changed=0), for every
            forks x pipelining combination: this is where SSH round trips and module transfer dominate.
  anchor    ansible-playbook itself on the same inventory (forks 16, pipelining on), against orchestrator's
            ansible-runner path: the ratio is orchestrator's overhead.
Prints a table and writes JSON (--json-out). Needs root (the sandbox). Noisy on a shared machine: repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.hosts import Host, HostList  # noqa: E402
from orchestrator.provision import inventory as inv_mod, localrepo  # noqa: E402
from orchestrator.provision.runner import plan_install, run_install  # noqa: E402
from orchestrator.sandbox import Sandbox  # noqa: E402

CACHE = REPO / ".cache" / "install" / "repo"  # shared with tests/integration/test_install.py


def site_vars(url: str) -> dict:
    return {"common_apt_mirror_url": url, "common_apt_mirror_trusted": True, "common_sysctl_apply": False,
            "nccl_pip_find_links": url + "wheels/", "rootless_docker_net": "host",
            "rootless_docker_home": "/var/lib/trainer", "rootless_docker_runtime_dir": "/var/lib/trainer/.run"}


def timed_orchestrator(sb, names, tags, workdir, extra, *, forks=16, pipelining=True) -> dict:
    hosts = HostList(Host(n) for n in names)
    inventory = inv_mod.build_inventory(hosts, ssh_args=["-F", str(sb.ssh_config)])
    plan = plan_install(hosts, inventory=inventory, workdir=workdir, tags=tags, forks=forks, pipelining=pipelining,
                        extra_vars=extra)
    t0 = time.monotonic()
    result = run_install(plan)
    wall = time.monotonic() - t0
    return {"wall_s": round(wall, 2), "rc": result.rc, "changed": sum(r.changed for r in result.hosts.values()),
            "failed": result.failed_hosts}


def timed_ansible_playbook(sb, names, tags, workdir, extra, *, forks=16, pipelining=True) -> dict:
    hosts = HostList(Host(n) for n in names)
    plan = plan_install(hosts, inventory=inv_mod.build_inventory(hosts, ssh_args=["-F", str(sb.ssh_config)]),
                        workdir=workdir, tags=tags, forks=forks, pipelining=pipelining, extra_vars=extra)
    inv_file = inv_mod.write_inventory(plan.inventory, Path(workdir) / "inventory.yml")
    for sub in ("cp", "tmp"):
        (Path(workdir) / sub).mkdir(parents=True, exist_ok=True)
    argv = plan.argv()
    argv[argv.index("-i") + 1] = str(inv_file)
    argv[0] = str(Path(sys.executable).with_name("ansible-playbook"))
    t0 = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, **plan.envvars()}, capture_output=True, text=True)
    wall = time.monotonic() - t0
    return {"wall_s": round(wall, 2), "rc": proc.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="4,16", help="host counts (comma-separated)")
    ap.add_argument("--forks", default="4,16", help="forks values for the rerun matrix")
    ap.add_argument("--tags", default="common,rdma", help="roles to install (default: the apt-only ones)")
    ap.add_argument("--rounds", type=int, default=1, help="rerun matrix repetitions (interleaved); medians reported")
    ap.add_argument("--workdir", default="runs/bench-install")
    ap.add_argument("--json-out", default="runs/bench-install/results.json")
    args = ap.parse_args()
    counts = [int(c) for c in args.hosts.split(",")]
    forks_values = [int(f) for f in args.forks.split(",")]
    tags = args.tags.split(",")
    work = Path(args.workdir).resolve()

    sb = Sandbox.up(f"bi{os.getpid()}", nodes=sum(counts))
    server = None
    rows = []
    try:
        localrepo.build_mirror(CACHE, roles_dir=REPO / "playbooks" / "roles", roles=["common", "rdma", "rootless_docker"],
                               wheels=["nvidia-nccl-cu12==2.32.3"])
        server = localrepo.serve(CACHE, bind=sb.head_ip)
        extra = site_vars(server.url)
        for host in sb.hosts:
            sb.exec(host, ["sh", "-c", "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"],
                    check=True)
        groups, start = {}, 0
        for n in counts:  # disjoint hosts per count: each group is fresh for its first install
            groups[n], start = sb.hosts[start:start + n], start + n
        for n, names in groups.items():
            r = timed_orchestrator(sb, names, tags, work / f"fresh-{n}", extra)
            rows.append({"hosts": n, "kind": "fresh", "tool": "orchestrator", "forks": 16, "pipelining": True, **r})
            print(rows[-1], flush=True)
        configs = [("orchestrator", f, p) for f in forks_values for p in (True, False)] + [("ansible-playbook", 16, True)]
        for rnd in range(args.rounds):  # interleaved and rotated: load drifts on a shared machine
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for n, names in groups.items():
                for tool, forks, pipelining in order:
                    timed = timed_orchestrator if tool == "orchestrator" else timed_ansible_playbook
                    r = timed(sb, names, tags, work / f"rerun-{n}-{tool}-{forks}-{pipelining}", extra,
                              forks=forks, pipelining=pipelining)
                    rows.append({"hosts": n, "kind": "rerun", "tool": tool, "forks": forks, "pipelining": pipelining,
                                 "round": rnd, **r})
                    print(rows[-1], flush=True)
    finally:
        if server:
            server.stop()
        sb.down()

    print(f"\n{'hosts':>5} {'kind':<6} {'tool':<17} {'forks':>5} {'pipe':>5} {'wall s':>8} {'changed':>7}")
    for r in rows:
        print(f"{r['hosts']:>5} {r['kind']:<6} {r['tool']:<17} {r['forks']:>5} {str(r['pipelining']):>5} "
              f"{r['wall_s']:>8.1f} {r.get('changed', '-'):>7}")
    for n in counts:
        sel = {cfg: statistics.median(r["wall_s"] for r in rows if r["hosts"] == n and r["kind"] == "rerun"
                                      and (r["tool"], r["forks"], r["pipelining"]) == cfg) for cfg in configs}
        best = sel[("orchestrator", max(forks_values), True)]
        print(f"{n} hosts, rerun medians of {args.rounds}: "
              f"pipelining off/on {sel[('orchestrator', max(forks_values), False)] / best:.2f}x, "
              f"forks {min(forks_values)}/{max(forks_values)} {sel[('orchestrator', min(forks_values), True)] / best:.2f}x, "
              f"orchestrator/ansible-playbook {best / sel[('ansible-playbook', 16, True)]:.2f}x")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tags": tags, "rows": rows, "cache": str(CACHE.relative_to(REPO))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
