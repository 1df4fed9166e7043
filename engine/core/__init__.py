"""The pure kernel: spec model, DAG validation, templates and the scheduler state machine.

Nothing here does I/O or imports a framework; time and randomness come in as arguments.
"""
