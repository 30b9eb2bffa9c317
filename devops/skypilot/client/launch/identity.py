"""Names ``skyguard launch`` makes up: the run key of each launch and the default state bucket.

The run key (``SKYGUARD_RUN_KEY``) is what the runner keeps its state under on every
node (``devops/skypilot/common/identity.py`` has the fallbacks for a task launched
without ``skyguard launch``). It is stamped once per launch and travels in the
task's envs, so every recovery of the job sees the same key, a restart of the jobs
controller does not change it, and a second launch with the same ``--name`` gets a
new one (and so a fresh attempt count and runtime budget).

S3 and GCS bucket names are global: a fixed default such as ``skyguard-state``
belongs to whoever created it first, in any account. So the default bucket is
derived from who launches what: ``skyguard-<user>-<project>-<hash>``, where the
hash covers the user and the project's ``origin`` url (or its absolute path when
it has none). The same user launching from the same project always gets the same
bucket (SkyPilot creates it on first use); anyone else gets another one.
"""

from __future__ import annotations

import hashlib
import re
import secrets

#: S3 and GCS both allow 3-63 of [a-z0-9.-], starting and ending with a letter or
#: digit; GCS refuses names containing "goog", S3 names that look like IP addresses
#: (the derived names have no dots, so they cannot).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PART_LIMIT = 20


def new_run_key(name: str) -> str:
    """A fresh run key for a launch of ``name``: the name and 8 random hex digits."""
    return f"{name}-{secrets.token_hex(4)}"


def default_state_bucket(user: str, project: str, project_source: str) -> str:
    """The bucket ``skyguard launch`` uses when none is given; deterministic.

    ``project`` is the project's short name (its directory), ``project_source`` what
    tells it apart from others of that name (the ``origin`` url, or the absolute path).
    """
    digest = hashlib.sha256(f"{user}\0{project_source}".encode()).hexdigest()[:10]
    parts = [_bucket_part(user), _bucket_part(project)]
    return "-".join(["skyguard", *filter(None, parts), digest])


def _bucket_part(text: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower())
    while "goog" in cleaned:
        cleaned = cleaned.replace("goog", "gog")
    return cleaned[:_PART_LIMIT].strip("-")
