"""Entry point for ``python -m engine``."""

import signal
import sys

# A container's PID 1 ignores a signal it has no handler for, and the service's handlers come
# a second or two later (imports, the Lua pool): a SIGTERM then was lost, and the pod served on
# until the kubelet's SIGKILL. Held back from here, it stays pending until the service takes
# it up and stops at once (engine.settings.take_held_stop_signal). The service only: `run`,
# `validate` and `check-lua` keep Ctrl-C and SIGTERM as Python has them.
if sys.argv[1:] in ([], ["serve"]):
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))

import os  # after the signals are held back: the imports below take the time

# gRPC's core writes its own plain-text lines on stderr, past our logging and its JSON format:
# one for each refused handshake (a plain client at a TLS port, a port scan), and one with the
# reason a port cannot be bound, which the service finds and logs itself. NONE keeps them all
# out, unless the user asks for them (GRPC_VERBOSITY=debug). Set before grpc is first imported,
# which is when gRPC reads it.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from engine.cli import main

raise SystemExit(main())
