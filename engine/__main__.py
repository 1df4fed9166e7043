"""Entry point for ``python -m engine``."""

import os

# gRPC's core logs each refused handshake (a plain client at a TLS port, a port scan) as a
# plain-text INFO line on stderr, past our logging and its JSON format; ERROR keeps the lines
# that matter. Set before grpc is first imported, which is when gRPC reads it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from engine.cli import main

raise SystemExit(main())
