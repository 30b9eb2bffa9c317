"""Every skyguard credential the notification config reads is in the one table the
runner strips from the command's environment (``common/credentials.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from devops.skypilot.common.credentials import CREDENTIALS, without_credentials
from notifications import ConfigError, NotificationConfig
from notifications.secrets import Secret


class RecordingEnv(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, *args: object, **kwargs: str) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def _secrets(value: object) -> Iterator[str]:
    if isinstance(value, Secret):
        yield value.reveal()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from _secrets(getattr(value, item.name))


def test_every_skyguard_secret_the_config_reads_is_a_listed_credential() -> None:
    probe = RecordingEnv()
    NotificationConfig.from_sources(None, probe)
    own = sorted(name for name in probe.asked if name.startswith("SKYGUARD_"))
    assert own, "the probe saw no variable read"
    secrets = set()
    for name in own:
        value = f"https://example.invalid/{name.lower()}-value"
        try:
            config = NotificationConfig.from_sources(None, {name: value})
        except ConfigError:
            continue  # validated as a setting: not a secret
        if value in set(_secrets(config)):
            secrets.add(name)
    assert secrets, "no secret found: the probe is broken"
    assert secrets <= CREDENTIALS.keys(), sorted(secrets - CREDENTIALS.keys())


def test_the_users_own_credentials_stay() -> None:
    env = {**dict.fromkeys(CREDENTIALS, "x"), "WANDB_API_KEY": "k", "GITHUB_TOKEN": "t"}
    assert without_credentials(env) == {"WANDB_API_KEY": "k", "GITHUB_TOKEN": "t"}
