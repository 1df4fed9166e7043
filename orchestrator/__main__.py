"""Entry point for ``python -m orchestrator``: the service, configured by the environment; it
takes no arguments but ``-h``/``--help``, and answers those without touching ``STATE_DB`` or a
port."""

import signal
import sys

# A container's PID 1 ignores a signal it has no handler for, and the service's handlers come
# a second or two later (imports, the store): a SIGTERM then was lost, and the pod served on
# until the kubelet's SIGKILL. Held back from here, it stays pending until the service takes
# it up and stops at once (engine.settings.take_held_stop_signal). The service only: help
# and a refused argument keep Ctrl-C and SIGTERM as Python has them, as `python -m engine`'s.
if not sys.argv[1:]:
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))

USAGE = """\
usage: python -m orchestrator [-h]

The DAG Engine orchestrator: registers workflows, keeps executions in the SQLite file
STATE_DB, routes each run to an engine, and serves HTTP on HTTP_PORT (8080) and gRPC on
GRPC_PORT (50051) until SIGTERM or Ctrl-C.

It takes no arguments: it is configured by environment variables (HOST, HTTP_PORT, GRPC_PORT,
STATE_DB, DISCOVERY_MODE, ENGINE_ADDRESSES, API_TOKEN, TLS_CERT_FILE, LOG_FORMAT, ...), each
in the variable table under "The orchestrator" in README.md; a bad value stops start-up with
one line naming the variable, exit 2. `dagctl up` runs one with engines on this machine.

options:
  -h, --help  show this help message and exit
"""

if sys.argv[1:]:
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        sys.stdout.write(USAGE)
        raise SystemExit(0)
    sys.stderr.write(
        f"python -m orchestrator: unexpected argument {sys.argv[1]!r}: it takes none (its "
        "settings are environment variables; see --help)\n"
    )
    raise SystemExit(2)

import os  # noqa: E402 (after the signals are held back: these imports take the time)

# gRPC's core writes its own plain-text lines on stderr, past our logging and its JSON format:
# one for each refused handshake (a plain client at a TLS port, a port scan), and one with the
# reason a port cannot be bound, which the service finds and logs itself. NONE keeps them all
# out, unless the user asks for them (GRPC_VERBOSITY=debug). Set before grpc is first imported,
# which is when gRPC reads it.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from orchestrator.serving import main  # noqa: E402

raise SystemExit(main())
