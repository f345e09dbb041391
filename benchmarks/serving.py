"""The demo server for tests and benchmarks: `space/app.py` on a free local port, waited for until it
answers, stopped afterwards.

    with serve_demo(model_dir, log=tmp / "server.log") as server:
        Client(server.url).predict(...)
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "space" / "app.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class DemoServer:
    process: subprocess.Popen
    url: str  # "http://127.0.0.1:PORT/"
    log: Path  # the server's stdout and stderr
    upload_dir: Optional[Path]  # its GRADIO_TEMP_DIR, when one was given


def wait_until_serving(server: DemoServer, timeout_s: float) -> None:
    """Returns once the page answers; raises RuntimeError (with the log's tail) if the server exits
    or stays silent for `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(server.url, timeout=5).close()
            return
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the demo server did not start:\n{server.log.read_text()[-3000:]}") from None
            time.sleep(0.5)


@contextlib.contextmanager
def serve_demo(model_dir, log, *, upload_dir=None, timeout_s: float = 300, extra_args=()):
    """`python space/app.py --model MODEL_DIR --port <free port>`; yields a `DemoServer` once it answers.

    `upload_dir` becomes the server's private GRADIO_TEMP_DIR (where Gradio keeps uploads);
    MODEL_ID is removed from its environment so that `--model` decides. The default timeout allows
    a cold import of torch and gradio on a busy machine.
    """
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows what the server printed, when it printed it
    env.pop("MODEL_ID", None)
    if upload_dir is not None:
        env["GRADIO_TEMP_DIR"] = str(upload_dir)
    command = [sys.executable, str(APP), "--model", str(model_dir), "--port", str(port), *extra_args]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    server = DemoServer(process, f"http://127.0.0.1:{port}/", Path(log), Path(upload_dir) if upload_dir else None)
    try:
        wait_until_serving(server, timeout_s)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
