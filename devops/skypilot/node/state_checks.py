"""Whether the state dir can hold an attempt: writable (else a config error, nothing
started), and on storage that survives a recovery (else a warning)."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.config import RunConfig
from devops.skypilot.node.flush import unflushed_state_warning
from devops.skypilot.node.state import StateDir

logger = logging.getLogger(__name__)

#: Filesystems that can outlive the machine: a recovery elsewhere still sees them.
SHARED_FILESYSTEMS = ("fuse", "nfs", "cifs", "smb", "lustre", "gpfs", "beegfs", "9p", "ceph")


def prepare_state_dir(config: RunConfig) -> None:
    """Create the state dir and the heartbeat file's dir, or fail as a config error."""
    try:
        StateDir(config.state_dir).ensure_writable()
    except OSError as error:
        raise ConfigError(f"state dir {config.state_dir} is not writable: {error}") from None
    heartbeat = config.heartbeat_file
    if heartbeat.is_dir():
        raise ConfigError(
            f"heartbeat file {heartbeat} is a directory (--heartbeat-file names a file)"
        )
    try:
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"heartbeat file {heartbeat}: cannot create its directory: {error}"
        ) from None


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` ('' if unknown)."""
    best, fstype = "", ""
    resolved = str(path.resolve())
    for partition in psutil.disk_partitions(all=True):
        mount = partition.mountpoint
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, partition.fstype
    return fstype


def warn_if_local_state(config: RunConfig) -> None:
    """A managed job whose state dir is on local disk loses its history on a recovery,
    and so does one whose cached bucket mount nothing flushes after the runner."""
    fstype = filesystem_type(config.state_dir)
    unflushed = unflushed_state_warning(config.state_dir, fstype)
    if unflushed is not None:
        logger.warning("%s", unflushed)
    if not config.managed:
        return
    if not any(fstype.startswith(shared) for shared in SHARED_FILESYSTEMS):
        logger.warning(
            "skyguard: state dir %s is on local disk (%s) of a managed job: attempt counts "
            "and the runtime budget reset when SkyPilot recovers onto another machine; "
            "mount a bucket there (see recipes/job.yaml)",
            config.state_dir,
            fstype or "unknown",
        )
