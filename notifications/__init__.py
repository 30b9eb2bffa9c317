"""Tell people how a job is doing: Discord, Slack, GitHub commit status and W&B.

Node code: imports only requests and tenacity at module level (``wandb`` lazily).
The runner sees this package only through :class:`NotificationObserver`, which
the CLI builds with :meth:`NotificationObserver.from_sources`.
"""

from pkgutil import extend_path

# `notifications` is a name a training repo may use too: any other `notifications`
# folder on sys.path joins this package, so the repo's own modules stay importable.
__path__ = extend_path(__path__, __name__)

from notifications.config import ConfigError, NotificationConfig
from notifications.notifier import Delivery, DeliveryStatus, Event, Level, Links, Notifier
from notifications.observer import NotificationObserver
from notifications.orchestrator import Orchestrator

__all__ = [
    "ConfigError",
    "Delivery",
    "DeliveryStatus",
    "Event",
    "Level",
    "Links",
    "NotificationConfig",
    "NotificationObserver",
    "Notifier",
    "Orchestrator",
]
