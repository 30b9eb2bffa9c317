"""skyguard's own credentials: the one table of what the runner reads for itself.

The runner removes each of these from the command's environment, so an ``env``
dump in the training log (which lands on the bucket) cannot leak them. The
user's own credentials are not in the table and reach the command unchanged,
even when skyguard reads them too: ``WANDB_API_KEY`` (the training code logs to
W&B with it) and ``GITHUB_TOKEN_VAR`` (a fallback for the commit status; the job
may clone with it).
"""

from __future__ import annotations

from collections.abc import Mapping

COORD_SECRET_VAR = "SKYGUARD_COORD_SECRET"
DISCORD_WEBHOOK_VAR = "SKYGUARD_DISCORD_WEBHOOK_URL"
GITHUB_TOKEN_VAR = "SKYGUARD_GITHUB_TOKEN"
SLACK_WEBHOOK_VAR = "SKYGUARD_SLACK_WEBHOOK_URL"

#: variable -> what skyguard uses it for. Add a new credential here, nowhere else.
CREDENTIALS: Mapping[str, str] = {
    COORD_SECRET_VAR: "signs the coordination messages between the nodes of a job",
    DISCORD_WEBHOOK_VAR: "the Discord webhook notifications are posted to",
    GITHUB_TOKEN_VAR: "sets the GitHub commit status",
    SLACK_WEBHOOK_VAR: "the Slack incoming webhook notifications are posted to",
}


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less skyguard's own credentials: what the command may see."""
    return {name: value for name, value in env.items() if name not in CREDENTIALS}
