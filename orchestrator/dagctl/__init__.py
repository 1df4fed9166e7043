"""``dagctl``, the DAG Engine command line: talks HTTP to the orchestrator at $DAGCTL_SERVER.

``cli`` holds the commands and ``main``; ``calling`` the HTTP client and SSE reader; ``showing``
the tables, event lines and live progress; ``launching`` the local cluster of ``dagctl up``;
``validating`` the local checks of ``dagctl validate``.
"""

from orchestrator.dagctl.cli import main

__all__ = ["main"]
