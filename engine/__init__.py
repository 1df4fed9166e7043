"""DAG Engine's engine service and the kernel both services share (``engine.core``)."""

from importlib import metadata


def installed_version() -> str:
    """The installed ``dag-engine`` distribution's version, which the engine, the orchestrator
    and dagctl all are; ``0+unknown`` when run from a tree that was never installed."""
    try:
        return metadata.version("dag-engine")
    except metadata.PackageNotFoundError:
        return "0+unknown"
