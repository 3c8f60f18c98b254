"""`python -m sohbet.echo`, the conformance and benchmark server, as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import websockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_echo_server_echoes_both_kinds_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "sohbet.echo", "--port", str(port), "--no-compression"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the echo server did not start"
                time.sleep(0.05)

        async def talk() -> tuple[object, object, str | None]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
                await ws.send("grüß dich")
                text = await ws.recv()
                await ws.send(b"\x00\xff binary")
                data = await ws.recv()
                return text, data, ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None

        text, data, extensions = asyncio.run(asyncio.wait_for(talk(), 20))
        assert (text, data, extensions) == ("grüß dich", b"\x00\xff binary", None)
        assert os.listdir(f"/proc/{proc.pid}/task") == [str(proc.pid)]  # one thread (`numeric_listener`)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert f"echo server on ws://127.0.0.1:{port}/" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
