"""The front's own cost per scoring request, without sockets, a worker process or a client.

The server's real pieces (settings, app, HTTP protocol, admission queue, process executor) are
built in this process around stand-ins: `--connections` client connections whose transports keep
count of what is written, and one worker whose socket answers each request frame with a canned
response frame. Each round every connection sends one request (one read, as wrk's arrive); the
rounds run on a uvloop loop. What is timed is Python and uvloop only: no system calls, no other
process, so a change of a few percent in the front's own work shows, which wrk cannot resolve on
a shared machine. It is a ruler for that work, not a throughput figure.

    .venv/bin/python benchmarks/front_path.py                   # µs per request, best of 5
    .venv/bin/python benchmarks/front_path.py --batch 8         # a worker that batches
    .venv/bin/python benchmarks/front_path.py --profile 30      # and the 30 costliest functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.server import ServerState as UvicornState

from mlscore.scoring.messages import RawResponse
from mlscore.server import runner
from mlscore.server.app import HEALTH_ROUTES, create_app
from mlscore.server.protocol import protocol_class
from mlscore.server.settings import Settings
from mlscore.server.supervisor import ProcessExecutor, Worker, WorkerConnection
from mlscore.server.worker import REQUEST, RUN, batch_started_frame, response_frame

MODEL = Path(__file__).resolve().parents[1] / "examples" / "digits_onnx" / "models" / "digits_mlp.onnx"
BODY = b'{"x": [[0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]]}'
REQUEST_BYTES = (b"POST /score HTTP/1.1\r\nHost: 127.0.0.1:5001\r\nContent-Length: %d\r\n"
                 b"Content-Type: application/json\r\n\r\n%s" % (len(BODY), BODY))
ANSWER = response_frame(RawResponse(200, [(b"content-type", b"application/json")], b'{"y": [[0.5]]}', run_ms=0.012))


class ClientTransport(asyncio.Transport):
    """A client connection: counts the responses written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.responses = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 5001)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.responses += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        """Nothing reads here."""

    def resume_reading(self) -> None:
        """Nothing reads here."""


class WorkerTransport(asyncio.Transport):
    """The worker's socket: counts the request frames the front sends."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        offset = 0
        while offset < len(data):
            kind, _, _, line, headers, body = REQUEST.unpack_from(data, offset)
            offset += REQUEST.size + line + headers + body
            self.requests += kind == RUN

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        """Never closed here."""


class StandInProcess:
    def is_alive(self) -> bool:
        return True

    def kill(self) -> None:
        """Nothing to kill."""


async def measure(connections: int, batch: int, rounds: int, repeats: int, profile: int) -> float:
    settings = Settings.build(cli={"model": MODEL, "model_name": "m", "max_batch_size": batch}, environ={})
    state, _ = runner.prepare_state(settings)
    worker = Worker(StandInProcess(), None, pid=1, batch=batch)  # type: ignore[arg-type]  # no process, no socket
    executor = ProcessExecutor(settings, [worker], state.admission)
    socket_end = WorkerTransport()
    worker.connection = WorkerConnection(executor, worker)
    worker.connection.connection_made(socket_end)
    executor._idle.append(worker)  # as _attach leaves a worker that is ready
    runner.use_executor(state, executor, "", 0.0)
    app = create_app(state)
    config = uvicorn.Config(app, http=protocol_class(settings, 10_000, HEALTH_ROUTES, app),  # type: ignore[arg-type]
                            lifespan="off", log_config=None, access_log=False)
    config.load()
    loop = asyncio.get_running_loop()
    uvicorn_state = UvicornState()
    clients = []
    for _ in range(connections):
        connection = config.http_protocol_class(config=config, server_state=uvicorn_state, app_state={}, _loop=loop)
        transport = ClientTransport()
        connection.connection_made(transport)
        clients.append((connection, transport))
    answered = 0

    async def one_round() -> None:
        """Every connection sends a request; the worker answers each frame (a batch at a time)."""
        nonlocal answered
        for connection, _ in clients:
            connection.data_received(REQUEST_BYTES)
        target = answered + connections
        idle_turns = 0
        while answered < target:
            await asyncio.sleep(0)  # the front's writes to the worker go out at the end of a turn
            waiting = socket_end.requests - answered
            if waiting <= 0:
                idle_turns += 1
                if idle_turns > 1000:
                    raise SystemExit(f"the front sent {socket_end.requests} request frames for {target} requests")
                continue
            take = min(waiting, batch)
            if take > 1:
                worker.connection.data_received(batch_started_frame(take, 0.0))  # type: ignore[union-attr]
            for _ in range(take):
                worker.connection.data_received(ANSWER)  # type: ignore[union-attr]
            answered += take
        await asyncio.sleep(0)

    for _ in range(200):  # warm up
        await one_round()
    best = float("inf")
    profiler = cProfile.Profile() if profile else None
    for repeat in range(repeats):
        before = sum(transport.responses for _, transport in clients)
        if profiler is not None and repeat == repeats - 1:
            profiler.enable()
        started = time.perf_counter()
        for _ in range(rounds):
            await one_round()
        elapsed = time.perf_counter() - started
        if profiler is not None and repeat == repeats - 1:
            profiler.disable()
        answers = sum(transport.responses for _, transport in clients) - before
        if answers != rounds * connections:
            raise SystemExit(f"{answers} answers for {rounds * connections} requests")
        best = min(best, elapsed / answers * 1e6)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8, help="client connections (default 8)")
    parser.add_argument("--batch", type=int, default=1, help="--max-batch-size of the server (default 1)")
    parser.add_argument("--rounds", type=int, default=3000, help="rounds per repeat (default 3000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the best is reported (default 5)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the last repeat and print its N costliest functions")
    args = parser.parse_args()
    best = uvloop.run(measure(args.connections, args.batch, args.rounds, args.repeats, args.profile))
    print(f"front path: {best:.2f} µs a request (best of {args.repeats} × {args.rounds} rounds, "
          f"{args.connections} connections, max batch {args.batch})")


if __name__ == "__main__":
    main()
