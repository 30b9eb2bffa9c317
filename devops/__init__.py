"""skyguard: supervise SkyPilot training jobs."""

from pkgutil import extend_path

# `devops` is a name a training repo may use too: any other `devops` folder on sys.path
# joins this package, so the repo's own modules stay importable beside skyguard's.
__path__ = extend_path(__path__, __name__)
