"""Generated gRPC code for package ``dagengine.v1`` (sources in ``proto/engine/api/``).

Everything else in this folder is written by ``generate_proto.sh`` and committed; CI regenerates
it and fails on any difference, so edit the ``.proto`` file and rerun the script, never the
output. ``dagengine_pb2`` holds the messages, ``dagengine_pb2_grpc`` the Engine and Orchestrator
stubs and servicers; the ``.pyi`` files type them for mypy.
"""
