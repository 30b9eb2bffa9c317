"""skyguard: supervise SkyPilot training jobs."""
