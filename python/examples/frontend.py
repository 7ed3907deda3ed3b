"""taskit_native in a few lines: start a host first, e.g.

    cargo run --release -p taskit-host -- --plugins plugins.d

then run this file with the port it printed (54543 by default).
"""

import asyncio
import sys
import threading

from taskit_native import BackendProcessingError, FrontEnd

port = int(sys.argv[1]) if len(sys.argv) > 1 else 54543
fe = FrontEnd([("127.0.0.1", port)])

# TaskIt 4.0's three ways: wait, callback, ignore.
print("add(4, 4) =", fe.work("add", 4, 4))
done = threading.Event()
fe.callback("greet", lambda r: (print("callback:", r), done.set()), None, "Ada", excited=True)
done.wait()
fe.ignore("log", "hello from Python")

# Remote errors keep their type and args.
try:
    fe.work("get-error")
except BackendProcessingError as e:
    print("remote error:", e.type, e.args)

# New: a per-call timeout, many calls at once, and asyncio.
print("wait-double(10) =", fe.with_options(timeout=5).work("wait-double", 10))
print("starmap:", fe.starmap("add", [(i, i) for i in range(5)]))


async def main():
    results = await asyncio.gather(*(fe.call("add", i, 1) for i in range(1000)))
    print("asyncio: 1000 calls, last =", results[-1])


asyncio.run(main())
print("plugins:", [(p["name"], len(p["tasks"])) for p in fe.tasks(("127.0.0.1", port))])
