"""bench.loopback.ServerProcess, the child-process server every service bench runs: it serves on the port the
kernel picked, logs (access lines included) to its log file and never to the pipe that carries the port, and a
server that cannot start fails with its own log's words."""

import httpx
import pytest

from bench.loopback import ServerProcess


def test_a_server_process_binds_port_0_and_keeps_its_stdout_for_the_port_line():
    server = ServerProcess(name="classifier only", env={"DETECTOR_CHECKPOINT": ""}, access_log=True)
    try:
        url = server.wait_ready(timeout=120)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)
        rest_of_stdout = server.process.stdout.read()
        server.log.seek(0)
        log = server.log.read().decode()
        server.stop()
    assert rest_of_stdout == ""  # a request log there would fill a pipe nobody reads and stall the server
    assert '"GET /healthz HTTP/1.1" 200' in log


def test_a_server_that_cannot_start_says_why():
    server = ServerProcess(name="no models", env={"DETECTOR_CHECKPOINT": "", "CLASSIFIER_CHECKPOINT": ""})
    try:
        with pytest.raises(RuntimeError, match="(?s)no models did not start: .*no model configured"):
            server.wait_ready(timeout=120)
    finally:
        server.stop()
