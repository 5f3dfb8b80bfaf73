"""Fixtures of the CLI tests: ``ol-jax proxy`` run in a subprocess."""

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Proxy:
    """``ol-jax proxy`` in a subprocess; ``url`` once it serves."""

    def __init__(self, tmp, *args, env=None, config):
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        extra = os.environ.get("PYTHONPATH", "")
        self.env = {
            **os.environ,
            "PYTHONPATH": REPO + (os.pathsep + extra if extra else ""),
            "JAX_PLATFORMS": "cpu",
            **(env or {}),
        }
        command = [sys.executable, "-m", "ol_jax.cli._main", "proxy", "--port", "0"]
        command += ["--root", str(tmp / "networks"), "--config", str(path), *args]
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.output = []
        # Generous: the real-model warm-up compiles for minutes on a loaded CPU.
        deadline = time.monotonic() + 900
        while True:
            line = self.lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("proxy exited:\n" + "".join(self.output))
            self.output.append(line)
            if "serving http://" in line:
                self.url = line.split("serving ")[1].split()[0]
                self.run_dir = line.rsplit("run folder ", 1)[1].strip()
                break

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def client(self, **kwargs):
        import anthropic

        kwargs = {"max_retries": 0, "timeout": 60.0, "api_key": "test", **kwargs}
        return anthropic.Anthropic(base_url=self.url, **kwargs)

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=60) as reply:
            return json.load(reply)

    @property
    def address(self):
        """(host, port) of the server."""
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def post(self, body, *, path="/v1/messages", headers=None):
        """Raw POST; returns (status, parsed JSON body)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers=headers or {})
        reply = conn.getresponse()
        status, payload = reply.status, json.loads(reply.read())
        conn.close()
        return status, payload

    def stop(self):
        """SIGTERM; returns the exit status once the learner is saved."""
        if self.process.returncode is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
            while (line := self.lines.get(timeout=10)) is not None:
                self.output.append(line)
        return self.process.returncode


@pytest.fixture(scope="session")
def proxy_process():
    """The :class:`Proxy` class: ``proxy_process(tmp, *args, config=...)``."""
    return Proxy
