"""How soon the orchestrator sees an engine that comes back on its address after being down.

    .venv/bin/python bench/engine_rejoin.py [--down 90] [--repeat 3] [--interval 2]

An orchestrator and one engine as processes (static discovery, health checks every
``--interval`` seconds). Each round the engine is killed with SIGKILL, left down ``--down``
seconds, started again on the same port, and timed from its ``serving`` line to the first
``GET /api/v1/engines`` that lists it ready. gRPC backs off between attempts to reach an
address that failed (1 s, then 1.6 times longer each time, up to 2 minutes unless capped), and
a health check meanwhile fails without trying: the figure is what that backoff adds to the
health check's own interval. Median of ``--repeat`` rounds, and the ratio to the interval.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import start, start_system, stop


def ready(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/api/v1/engines", timeout=5) as resp:
        engines = json.load(resp)["engines"]
    return any(e["state"] == "ready" for e in engines)


def wait_ready(url: str, within: float) -> float | None:
    """Seconds until the engine is listed ready, polled every 0.1 s; None past ``within``."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        if ready(url):
            return time.monotonic() - began
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--down", type=float, default=90.0, help="seconds the engine is down")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0, help="ENGINE_HEALTH_CHECK_INTERVAL")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        try:
            system = start_system(
                tmp,
                procs,
                engines=1,
                orchestrator_env={"ENGINE_HEALTH_CHECK_INTERVAL": f"{args.interval:g}"},
            )
            if wait_ready(system.url, 60) is None:
                raise RuntimeError("the engine was never listed ready")
            engine = system.named["engine-0"]
            port = json.loads(
                next(
                    line
                    for line in (tmp / "engine-0.log").read_text().splitlines()
                    if '"serving"' in line
                )
            )["port"]
            seen: list[float] = []
            for round_ in range(1, args.repeat + 1):
                engine.send_signal(signal.SIGKILL)
                engine.wait()
                time.sleep(args.down)
                env = {
                    "ENGINE_ID": "engine-0",
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "LOG_FORMAT": "json",
                    "LOG_LEVEL": "INFO",
                }
                engine, _ = start(["-m", "engine"], env, tmp / f"engine-0.{round_}.log", procs)
                took = wait_ready(system.url, 300)
                if took is None:
                    raise RuntimeError("the engine back was not listed ready within 300 s")
                seen.append(took)
                print(f"  round {round_}: down {args.down:g} s, listed ready {took:.1f} s after")
            median = statistics.median(seen)
            print(
                f"engine back after {args.down:g} s down: listed ready in {median:.1f} s median "
                f"({median / args.interval:.1f}x the {args.interval:g} s health interval)"
            )
        finally:
            stop(procs)


if __name__ == "__main__":
    main()
