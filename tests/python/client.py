"""Drives the original TaskIt 4.0 frontend against a host; prints one JSON
object with what it saw. Usage: client.py HOST PORT"""
import json
import sys

from taskit.frontend import BackendProcessingError, FrontEnd

host, port = sys.argv[1], int(sys.argv[2])
backend = (host, port)
frontend = FrontEnd([backend])
seen = {}


def remote_error(task, *args, **kw):
    try:
        frontend.work(task, *args, **kw)
    except BackendProcessingError as e:
        return [e.type, list(e.args)]
    return None


seen["add"] = frontend.work("add", 4, 4)
big = "x" * 5000 + "\u00e9\u00e8"
seen["echo_big"] = frontend.work("echo", big) == big
# The reply ["success","yyy..."] is exactly 4096 bytes: two full articles.
exact = "y" * 4082
seen["echo_exact"] = frontend.work("echo", exact) == exact
# The request ["echo", ["zzz..."], {}] is exactly 2048 bytes: this client
# never closes it (no last article), the host serves it once it goes quiet.
unclosed = "z" * (2048 - len(json.dumps(["echo", [""], {}])))
seen["echo_unclosed"] = frontend.work("echo", unclosed) == unclosed
seen["greet"] = frontend.work("greet", "Ada", greeting="Hi", excited=True)
seen["error"] = remote_error("get-error")
seen["unknown"] = remote_error("no-such-task")
seen["arity"] = remote_error("add", 1, 2, 3)
seen["status"] = frontend.get_tasks(backend)
if len(sys.argv) > 3 and sys.argv[3] == "stop":
    try:
        frontend.send_stop(backend)
        seen["stop"] = None
    except BackendProcessingError as e:
        seen["stop"] = [e.type, list(e.args)]
print(json.dumps(seen))
