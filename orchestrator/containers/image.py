"""Build a CPU test image tar with no registry and no daemon: a docker-archive written from this machine's files.

    from orchestrator.containers.image import build_test_image, read_image_tar
    info = build_test_image("orch-test.tar", tag="orch-test:cpu")            # /usr/bin/python3 + libs + stdlib
    info = build_test_image("orch-full.tar", tag="orch-full:cpu", venv=".venv")  # + the venv (torch, our package)
    read_image_tar("orch-test.tar").image_id                                  # 'sha256:...' (what `docker load` makes)

The archive is what `docker save` writes (manifest.json, <config>.json, <layer>/layer.tar), so `docker load`
takes it on any node. Layer 1 holds the interpreter, the shared libraries it and the venv's extension modules
link against (found with ldd), and its standard library; layer 2 (optional) holds the virtualenv at its own
absolute path, so its scripts and pyvenv.cfg keep working inside the container. The real training image is
containers/Dockerfile (CUDA + PyTorch); this one exists so tests and benchmarks have a real image here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

PYTHON = "/usr/bin/python3"
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib64")
_LDD_PATH = re.compile(r"(/\S+) \(0x")


@dataclass(frozen=True)
class ImageTar:
    """What an image tar holds, read from its manifest (no daemon needed)."""

    path: str
    image_id: str
    """'sha256:<config digest>': the id `docker load` gives the image on every node."""
    tags: tuple[str, ...]
    size: int


def read_image_tar(path: str | os.PathLike) -> ImageTar:
    """Read manifest.json of a docker-archive tar; ConfigError when the file is missing or not an image."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("IMAGE", str(path), "name an existing image tar (from `docker save` or `orchestrator images build-test`)")
    try:
        with tarfile.open(p, "r:") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            entry = manifest[0]
            config = entry["Config"]
            member = tar.getmember(config)
            digest = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
    except (tarfile.TarError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError("IMAGE", str(path), f"not a docker image archive ({type(exc).__name__}: {exc});"
                          " give a tar made by `docker save`") from None
    return ImageTar(str(p), f"sha256:{digest}", tuple(entry.get("RepoTags") or ()), p.stat().st_size)


def _shared_libs(binaries: list[str]) -> set[str]:
    """Libraries (and the loader) that `binaries` need, as real files plus the symlink names they are found by."""
    found: set[str] = set()
    for chunk in range(0, len(binaries), 200):
        out = subprocess.run(["ldd", *binaries[chunk:chunk + 200]], capture_output=True, text=True).stdout
        found.update(_LDD_PATH.findall(out))
    return found


def _extension_modules(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]


def _add_path(tar: tarfile.TarFile, path: str, seen: set[str]) -> None:
    """Add `path` with its parent directories (and, for a symlink, its target) to the layer. Parents are
    resolved first (/lib/x86_64-linux-gnu/libc.so.6 -> /usr/lib/...): `docker load` refuses to write through a
    symlinked directory, so the merged-/usr links (/lib -> usr/lib) are added as links of their own."""
    path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if parent not in seen:
            seen.add(parent)
            tar.addfile(tar.gettarinfo(parent, arcname=parent.lstrip("/")))
    if path in seen:
        return
    seen.add(path)
    tar.add(path, arcname=path.lstrip("/"), recursive=os.path.isdir(path) and not os.path.islink(path),
            filter=_skip_caches)
    if os.path.islink(path):
        _add_path(tar, os.path.realpath(path), seen)


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Bytecode caches and the stdlib's own test suite are a third of the size and not needed to run."""
    name = "/" + info.name
    return None if "/__pycache__" in name or re.search(r"/python3\.\d+/test(/|$)", name) else info


def _layer(paths: list[str]) -> bytes:
    buf = io.BytesIO()
    seen: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for link in MERGED_USR_LINKS:
            if os.path.islink(link) and link not in seen:
                seen.add(link)
                tar.addfile(tar.gettarinfo(link, arcname=link.lstrip("/")))
        for path in sorted(paths):
            _add_path(tar, path, seen)
    return buf.getvalue()


def build_test_image(out: str | os.PathLike, *, tag: str = "orch-test:cpu", venv: str | os.PathLike | None = None,
                     venv_layer: bool = True, extra_paths: tuple[str, ...] = ()) -> ImageTar:
    """Write a docker-archive at `out` with python3 (+ the venv when given); returns what it holds.

    venv_layer=False: only the system libraries the venv's extension modules need go in; the venv itself is
    bind-mounted at run time (small test images that still run torch)."""
    stdlib = f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    base_paths = [PYTHON, os.path.realpath(PYTHON), stdlib, "/etc/passwd", "/etc/group", *extra_paths]
    layers = []
    binaries = [os.path.realpath(PYTHON)] + _extension_modules(Path(stdlib))
    if venv is not None:
        venv_dir = os.path.abspath(venv)
        if not Path(venv_dir, "pyvenv.cfg").is_file():
            raise ConfigError("--venv", str(venv), "name a virtualenv directory (it has pyvenv.cfg)")
        binaries += _extension_modules(Path(venv_dir))
    libs = _shared_libs(binaries)
    if venv is not None:  # the venv's bundled libraries (torch/lib) belong to the venv, not to the base layer
        libs = {p for p in libs if not os.path.realpath(p).startswith(venv_dir + os.sep)}
    base_paths += sorted(libs)
    layers.append(_layer(base_paths))
    if venv is not None and venv_layer:
        layers.append(_layer([venv_dir]))
    return _write_archive(Path(out), tag, layers)


def _write_archive(out: Path, tag: str, layers: list[bytes]) -> ImageTar:
    diff_ids = [hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
                   "Cmd": [PYTHON]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "orchestrator.containers.image"}
                    for _ in layers],
    }, sort_keys=True).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [tag],
                            "Layers": [f"{d}/layer.tar" for d in diff_ids]}]).encode()
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for digest, layer in zip(diff_ids, layers):
            put(f"{digest}/layer.tar", layer)
        put(f"{config_hex}.json", config)
        put("manifest.json", manifest)
    os.replace(tmp, out)
    return read_image_tar(out)
