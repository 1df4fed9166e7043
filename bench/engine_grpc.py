"""The engine service over gRPC on loopback: round trip, events per second, concurrent runs.

    .venv/bin/python bench/engine_grpc.py [--round-trips 300] [--nodes 2000] [--concurrent 200]
                                          [--repeat 5] [--lua-workers N]

Starts ``python -m engine`` as a real subprocess (as Kubernetes would) and, for scale, a bare
grpc.aio unary echo server in another subprocess; the client is grpc.aio in this process.

1. Round trip: a 1-node workflow's ``Execute`` (request out, four events back, stream closed),
   one call at a time, against the echo server's unary call carrying the same request bytes.
   The ratio of the medians is the target (<= 3x).
2. Events per second on one stream: one run of a wide workflow (``--nodes`` nodes, layers of
   100, each node depending on two of the layer above), counted from request to the stream's
   end; once with trivial Lua nodes, once with ``sleep: 0s`` nodes (no Lua: the event pipeline
   alone).
3. Concurrency: ``--concurrent`` executions of a 3-node workflow started at once on one engine
   (CAPACITY raised to fit), wall time until the last stream ends, and executions per second.

Each figure is the median of ``--repeat`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]

ECHO_METHOD = "/bench.Echo/Echo"


# -- the echo server (runs as a subprocess of this script) ---------------------------------------


async def echo_server() -> None:
    def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)},  # bytes in, bytes out
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


# -- processes ------------------------------------------------------------------------------


def start_engine(
    capacity: int, lua_workers: int | None, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "METRICS_PORT")}
    env.update(
        HOST="127.0.0.1", PORT="0", CAPACITY=str(capacity), LOG_FORMAT="json", ENGINE_ID="bench"
    )
    if lua_workers:
        env["LUA_WORKERS"] = str(lua_workers)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                return proc, int(json.loads(line)["port"])
        if proc.poll() is not None:
            raise SystemExit(f"the engine exited at start-up:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the engine did not start within 60s")


def start_echo() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--echo-server"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- workloads ------------------------------------------------------------------------------


def spec_text(workflow_id: str, nodes: list[dict[str, object]], concurrency: int = 16) -> str:
    return json.dumps(
        {"id": workflow_id, "version": "1.0.0", "concurrency": concurrency, "nodes": nodes}
    )


def wide(nodes: int, kind: str, width: int = 100, seed: int = 3) -> str:
    rnd = random.Random(seed)
    docs: list[dict[str, object]] = []
    for i in range(nodes):
        layer = i // width
        deps = [f"n{(layer - 1) * width + j}" for j in rnd.sample(range(width), 2)] if layer else []
        body: dict[str, object] = {"lua": "return { v = 1 }"} if kind == "lua" else {"sleep": "0s"}
        docs.append({"id": f"n{i}", "depends_on": deps, **body})
    return spec_text(f"wide-{kind}", docs, concurrency=width)


async def execute(stub: pb_grpc.EngineAsyncStub, request: pb.ExecuteRequest) -> list[pb.Event]:
    events = [event async for message in stub.Execute(request) for event in message.events]
    last = events[-1]
    if last.type != "execution.succeeded":
        raise SystemExit(f"a run ended {last.type}: {last.data_json}")
    return events


async def round_trips(
    address: str, echo_address: str, count: int, repeat: int
) -> tuple[list[float], list[float]]:
    one = pb.ExecuteRequest(
        spec=spec_text("one", [{"id": "a", "lua": "return { v = 1 }"}]), inputs_json="{}"
    )
    payload = one.SerializeToString()
    engine_times: list[float] = []
    echo_times: list[float] = []
    async with (
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(echo_address) as echo_channel,
    ):
        stub = pb_grpc.EngineStub(channel)
        echo = echo_channel.unary_unary(ECHO_METHOD)
        for _ in range(50):  # warm: connections, the parsed spec, the compiled chunk
            await execute(stub, one)
            await echo(payload)
        for _ in range(repeat):
            # interleaved, so both see the same machine at the same moment
            for _ in range(count):
                t0 = time.perf_counter()
                await execute(stub, one)
                t1 = time.perf_counter()
                await echo(payload)
                t2 = time.perf_counter()
                engine_times.append(t1 - t0)
                echo_times.append(t2 - t1)
    return engine_times, echo_times


async def one_stream(address: str, spec: str, repeat: int) -> list[tuple[int, float]]:
    request = pb.ExecuteRequest(spec=spec, inputs_json="{}")
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EngineStub(channel)
        await execute(stub, request)
        for _ in range(repeat):
            t0 = time.perf_counter()
            events = await execute(stub, request)
            out.append((len(events), time.perf_counter() - t0))
    return out


async def concurrent(address: str, count: int, repeat: int) -> list[float]:
    spec = spec_text(
        "fan",
        [
            {"id": "a", "lua": "return { v = inputs.i }"},
            {"id": "b", "depends_on": ["a"], "lua": "return { v = results.a.v * 2 }"},
            {"id": "c", "depends_on": ["a"], "lua": "return { v = results.a.v + 1 }"},
        ],
    )
    times = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EngineStub(channel)

        async def wave() -> None:
            requests = [
                pb.ExecuteRequest(spec=spec, inputs_json=json.dumps({"i": i})) for i in range(count)
            ]
            runs = await asyncio.gather(*(execute(stub, r) for r in requests))
            for i, events in enumerate(runs):
                assert json.loads(events[-1].data_json)["outputs"] == {
                    "b": {"v": 2 * i},
                    "c": {"v": i + 1},
                }

        await wave()
        for _ in range(repeat):
            t0 = time.perf_counter()
            await wave()
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--lua-workers", type=int, default=None)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(echo_server())
        return

    with tempfile.TemporaryDirectory() as tmp:
        engine, port = start_engine(
            args.concurrent + 10, args.lua_workers, Path(tmp) / "engine.log"
        )
        echo, echo_port = start_echo()
        address, echo_address = f"127.0.0.1:{port}", f"127.0.0.1:{echo_port}"
        try:
            rt_engine, rt_echo = asyncio.run(
                round_trips(address, echo_address, args.round_trips, args.repeat)
            )
            lua_stream = asyncio.run(one_stream(address, wide(args.nodes, "lua"), args.repeat))
            sleep_stream = asyncio.run(one_stream(address, wide(args.nodes, "sleep"), args.repeat))
            waves = asyncio.run(concurrent(address, args.concurrent, args.repeat))
        finally:
            stop(engine)
            stop(echo)

    cores = os.cpu_count()
    print(
        f"engine gRPC on loopback ({cores} cores, Python {sys.version.split()[0]}, "
        f"grpcio {grpc.__version__}); medians of {args.repeat} runs after a warm-up"
    )
    eng, ech = statistics.median(rt_engine), statistics.median(rt_echo)
    ratio = eng / ech
    print(
        f"1. round trip, 1-node Execute   {eng * 1e6:9.0f} us   "
        f"(p90 {statistics.quantiles(rt_engine, n=10)[-1] * 1e6:.0f} us, "
        f"{len(rt_engine)} calls)"
    )
    print(
        f"   bare grpc.aio unary echo     {ech * 1e6:9.0f} us   "
        f"(p90 {statistics.quantiles(rt_echo, n=10)[-1] * 1e6:.0f} us)"
    )
    print(
        f"   ratio                        {ratio:9.2f} x    target <= 3x: "
        f"{'met' if ratio <= 3 else 'MISSED'}"
    )
    for label, runs in (("Lua nodes", lua_stream), ("sleep 0s nodes", sleep_stream)):
        count = runs[0][0]
        med = statistics.median(t for _, t in runs)
        print(
            f"2. one stream, {args.nodes} {label:<15} {count:6d} events in {med * 1000:7.1f} ms"
            f"   {count / med:10,.0f} events/s"
        )
    med = statistics.median(waves)
    print(
        f"3. {args.concurrent} concurrent executions   wall {med * 1000:7.1f} ms"
        f"   {args.concurrent / med:8,.0f} executions/s   (3 Lua nodes each)"
    )


if __name__ == "__main__":
    main()
