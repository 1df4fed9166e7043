"""DAG Engine's engine service and the kernel both services share (``engine.core``)."""
