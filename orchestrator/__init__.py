"""DAG Engine's orchestrator service and the ``dagctl`` command line."""
