"""The skyguard the nodes get: a wheel of this very installation, shipped by ``file_mounts``.

The nodes must run the same skyguard as the client (the runner's records, exit codes and
recipe knobs are one contract), and the user's repo, their workdir, holds no skyguard. So
``skyguard launch`` packs the installed import packages (``devops``, ``notifications``,
recipes included) and this distribution's metadata into a wheel, and the recipe's setup
installs exactly that file. Nothing is fetched for skyguard itself: the nodes need no
route to wherever the client got it (a private index, a clone, a release not on the
node's index); its dependencies come from the node's package index as before.

The wheel is byte-for-byte the same for the same files (sorted entries, fixed times), and
cached under its content hash, so launches of one installation share one file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path

from devops.skypilot.common.files import write_atomic

#: The import packages of the distribution, side by side in one directory (site-packages,
#: or a clone's root for an editable install).
PACKAGES = ("devops", "notifications")
#: Top-level modules beside them: the ``skyguard`` script's entry point.
MODULES = ("_skyguard_script",)
DIST = "skyguard"
#: Where the shipped files land on every node (``~`` is the node user's home).
NODE_DIR = "~/.skyguard/dist"
#: The recipe env that names the wheel for setup.sh (a file name in ``NODE_DIR``).
WHEEL_ENV = "SKYGUARD_WHEEL"
#: zip entries need a date: a fixed one keeps the bytes (and the cache key) stable.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
#: A cached wheel unused this long is removed when another one is written (seconds).
PRUNE_AFTER = 14 * 24 * 3600.0


class WheelError(Exception):
    """The installation cannot be packed (not installed, unreadable): one line."""


def package_root() -> Path:
    """The directory holding this installation's ``devops/`` and ``notifications/``."""
    return Path(__file__).resolve().parents[4]


def _package_files(root: Path) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        top = root / package
        if not (top / "__init__.py").is_file():
            raise WheelError(f"skyguard's package {package!r} is missing from {root}")
        for folder, dirs, files in os.walk(top, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(folder, name)
                yield path.relative_to(root).as_posix(), path
    for module in MODULES:
        path = root / f"{module}.py"
        if not path.is_file():
            raise WheelError(f"skyguard's module {module!r} is missing from {root}")
        yield path.name, path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_name(version: str) -> str:
    """The PEP 427 file name (pip refuses a wheel named otherwise)."""
    return f"{DIST}-{re.sub(r'[^A-Za-z0-9.+]+', '_', version)}-py3-none-any.whl"


def wheel_bytes() -> tuple[str, bytes]:
    """(file name, content) of a wheel of this installation."""
    # The installed one (a .dist-info with METADATA), not a build's leftover
    # skyguard.egg-info that a clone's root on sys.path also shows.
    found = [d for d in metadata.distributions(name=DIST) if d.read_text("METADATA")]
    if not found:
        raise WheelError(
            "skyguard is not installed as a distribution here (pip install 'skyguard[launch]'): "
            "launch ships the installed skyguard to the nodes"
        )
    dist = found[0]
    version = dist.version
    info = f"{DIST}-{re.sub(r'[^A-Za-z0-9.+]+', '_', version)}.dist-info"
    meta_text = dist.read_text("METADATA") or ""
    entries: list[tuple[str, bytes]] = []
    try:
        for name, path in _package_files(package_root()):
            entries.append((name, path.read_bytes()))
    except OSError as error:
        raise WheelError(f"cannot read skyguard's files: {error}") from None
    entries.append((f"{info}/METADATA", meta_text.encode()))
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    top_level = "".join(f"{name}\n" for name in (*PACKAGES, *MODULES))
    entries.append((f"{info}/top_level.txt", top_level.encode()))
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: skyguard launch\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entries.append((f"{info}/WHEEL", wheel_meta.encode()))
    record = [_record_line(name, data) for name, data in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            item = zipfile.ZipInfo(name, date_time=_EPOCH)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(item, data)
    return wheel_name(version), buffer.getvalue()


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skyguard" / "wheels"


def _prune(cache: Path, keep: Path) -> None:
    """Drop wheels of older installations (an edited clone makes one per change)."""
    horizon = time.time() - PRUNE_AFTER
    for folder in cache.iterdir():
        with contextlib.suppress(OSError):
            if folder != keep and folder.stat().st_mtime < horizon:
                shutil.rmtree(folder)


def build_wheel(cache: Path | None = None) -> Path:
    """The wheel of this installation, under ``<cache>/<content hash>/`` (written atomically)."""
    name, data = wheel_bytes()
    cache = cache or cache_dir()
    folder = cache / hashlib.sha256(data).hexdigest()[:16]
    target = folder / name
    if target.is_file() and target.stat().st_size == len(data):
        with contextlib.suppress(OSError):
            os.utime(folder)  # in use: not pruned
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, mode=0o644)
    except OSError as error:
        raise WheelError(f"cannot write the skyguard wheel to {folder}: {error}") from None
    _prune(cache, folder)
    return target
