"""Starts the real taskit-host binary for the tests.

The host binary and the plugin files come from the environment, as
tests/python_frontend.rs (run by `cargo test`) sets them:
TASKIT_HOST_BIN, and TASKIT_TEST_PLUGINS (plugin .so paths, separated by
os.pathsep).
"""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from taskit_native import FrontEnd

READY = re.compile(r"taskit-host ready listening=(\S+):(\d+)")
TLS = re.compile(r"tls=(\S+):(\d+)")


class Host:
    """One taskit-host process on a free loopback port."""

    def __init__(self, tmp_path, extra=(), bind="127.0.0.1:0", token_file=True):
        binary = os.environ["TASKIT_HOST_BIN"]
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        for so in os.environ["TASKIT_TEST_PLUGINS"].split(os.pathsep):
            shutil.copy(so, plugins)
        self.token = "python-frontend-test-token"
        token_path = tmp_path / "admin-token"
        token_path.write_text(self.token)
        token_path.chmod(0o600)
        args = [binary, "--plugins", str(plugins), "--bind", bind, "--drain-timeout", "5"]
        # Without a token file the host makes its own token, which only
        # <stop>, <kill> and <reload> need (a frontend here finds it).
        if token_file:
            args += ["--admin-token-file", str(token_path)]
        args += list(extra)
        isolation = os.environ.get("TASKIT_TEST_ISOLATION")
        if isolation and "--isolation" not in extra:
            args += ["--isolation", isolation]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                match = READY.search(line)
                if match:
                    self.addr = (match.group(1), int(match.group(2)))
                    tls = TLS.search(line)
                    self.tls_addr = tls and (tls.group(1), int(tls.group(2)))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or not hasattr(self, "addr"):
            self.close()
            raise RuntimeError("taskit-host did not start:\n" + "".join(self.lines))

    @property
    def spec(self):
        return "%s:%d" % self.addr

    def frontend(self, **settings):
        settings.setdefault("admin_token", self.token)
        return FrontEnd([self.addr], **settings)

    def running(self):
        return self.proc.poll() is None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_until(what, condition, limit=60.0):
    """Polls `condition` until it holds; fails after `limit` seconds (a
    deadline for a broken build, not a timing the test relies on)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("host"))
    yield h
    h.close()


@pytest.fixture
def new_host(tmp_path):
    """A host of the test's own, for tests that stop or kill it."""
    hosts = []

    def start(extra=(), bind="127.0.0.1:0", token_file=True):
        d = tmp_path / ("h%d" % len(hosts))
        d.mkdir()
        h = Host(d, extra, bind, token_file)
        hosts.append(h)
        return h

    yield start
    for h in hosts:
        h.close()


@pytest.fixture
def fe(host):
    return host.frontend()


@pytest.fixture
def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
