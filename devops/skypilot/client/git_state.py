"""The git side of ``skyguard launch``: which commit a job runs and where its code comes from.

Clean tree, commit pushed, ``--git-ref`` resolved, and the workdir the nodes get: the
local path, or the ``origin`` url and commit when ``--git-ref`` is not the checked-out
commit. Only runs ``git``; no SkyPilot.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


class GitCheckError(Exception):
    """A git check failed: one line, naming the flag that fixes it."""


def _git(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *argv], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise GitCheckError("git is not installed (or pass --skip-git-check)") from None


def git_toplevel(cwd: Path) -> Path | None:
    result = _git(cwd, "rev-parse", "--show-toplevel")
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def origin_url(repo: Path) -> str | None:
    """The ``origin`` remote's url, or None (no remote, not a repository, no git)."""
    try:
        result = _git(repo, "remote", "get-url", "origin")
    except GitCheckError:
        return None
    url = result.stdout.strip() if result.returncode == 0 else ""
    return url or None


def check_git(repo: Path, ref: str | None, skip_check: bool) -> tuple[str | None, str | None]:
    """Resolve the commit to run and where its code comes from.

    Returns ``(commit, remote_url)``: ``remote_url`` is set when ``ref`` is not the
    checked-out commit, so the nodes must fetch it instead of the local tree.
    """
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        if ref is not None:
            raise GitCheckError(f"--git-ref {ref}: {repo} has no commits")
        if skip_check:
            return None, None
        raise GitCheckError(f"{repo} has no commits yet: commit first or pass --skip-git-check")
    head_commit = head.stdout.strip()
    commit = head_commit
    if ref is not None:
        resolved = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if resolved.returncode != 0:
            raise GitCheckError(f"--git-ref {ref}: not a commit in {repo}")
        commit = resolved.stdout.strip()
    remote_url = None
    if commit != head_commit:
        url = _git(repo, "remote", "get-url", "origin")
        if url.returncode != 0:
            raise GitCheckError(f"--git-ref {ref}: no 'origin' remote to fetch it from")
        remote_url = url.stdout.strip()
    if skip_check:
        return commit, remote_url
    if remote_url is None:
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
        changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
        if changed:
            raise GitCheckError(
                f"working tree has uncommitted changes ({len(changed)} file(s), e.g. "
                f"{changed[0]}): commit them or pass --skip-git-check"
            )
    pushed = _git(repo, "branch", "--remotes", "--contains", commit)
    if pushed.returncode != 0 or not pushed.stdout.strip():
        raise GitCheckError(
            f"commit {commit[:12]} is not on any remote branch: push it or pass --skip-git-check"
        )
    return commit, remote_url


def workdir_source(
    workdir_flag: str | None, ref: str | None, skip_check: bool, cwd: Path
) -> tuple[Path, str | Mapping[str, str], str | None]:
    """The local workdir, what the nodes get (the path, or a git url + commit), the commit."""
    if workdir_flag is not None:
        workdir = Path(workdir_flag).expanduser().resolve()
        if not workdir.is_dir():
            raise GitCheckError(f"--workdir {workdir_flag}: not a directory")
    else:
        workdir = git_toplevel(cwd) or cwd
    if git_toplevel(workdir) is None:
        if skip_check and ref is None:
            return workdir, str(workdir), None
        raise GitCheckError(f"{workdir} is not a git repository: pass --skip-git-check")
    commit, remote_url = check_git(workdir, ref, skip_check)
    if remote_url is not None and commit is not None:
        return workdir, {"url": remote_url, "ref": commit}, commit
    return workdir, str(workdir), commit
