"""python/examples/frontend.py runs against a real host and says what the
README says it does."""

import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "frontend.py")


def test_the_example_runs(new_host):
    h = new_host(token_file=False)
    out = subprocess.run(
        [sys.executable, EXAMPLE, str(h.addr[1])],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "add(4, 4) = 8" in out.stdout
    assert "callback: Hello, Ada!" in out.stdout
    assert "remote error: AssertionError ('this task always fails',)" in out.stdout
    assert "starmap: [0, 2, 4, 6, 8]" in out.stdout
    assert "asyncio: 1000 calls, last = 1000" in out.stdout
    assert "plugins: [" in out.stdout
