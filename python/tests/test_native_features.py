"""What TaskIt 4.0 lacked: timeouts, idempotent calls, tasks(), reload(),
asyncio, Ctrl-C, map, and values that JSON cannot carry."""

import asyncio
import gc
import math
import os
import signal
import subprocess
import sys
import threading
import weakref

import pytest

from conftest import wait_until
from taskit_native import (
    BackendProcessingError,
    CallTimeoutError,
    FrontEnd,
    TaskitError,
)


def test_timeout_raises_call_timeout(new_host):
    # sleep-forever keeps a host thread: a host of its own.
    fe = new_host().frontend()
    slow = fe.with_options(timeout=0.05)
    with pytest.raises(CallTimeoutError) as caught:
        slow.work("sleep-forever")
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, TaskitError)
    # The frontend itself has no timeout; the view shares its connection.
    assert fe.timeout is None and slow.timeout == 0.05
    assert fe.work("add", 1, 1) == 2


def test_frontend_wide_timeout(new_host):
    fe = new_host().frontend(timeout=0.05)
    with pytest.raises(CallTimeoutError):
        fe.work("sleep-forever")
    assert fe.with_options(timeout=None).work("wait-double", 100) == 200


def test_idempotent_views(fe):
    again = fe.with_options(idempotent=True)
    assert again.idempotent and not fe.idempotent
    assert again.work("add", 2, 2) == 4


def test_a_crashed_worker_is_a_processing_error(fe):
    if os.environ.get("TASKIT_TEST_ISOLATION") == "none":
        pytest.skip("a crash in the host process ends the host")
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("segv")
    assert caught.value.type == "WorkerCrashed"

    def serves():
        try:
            return fe.work("crasher-fine") is not None
        except BackendProcessingError:
            return False

    wait_until("the plugin to serve again", serves)


def test_tasks_lists_plugins_and_ids(host, fe):
    plugins = {p["name"]: p for p in fe.tasks(host.addr)}
    assert "add" in plugins["demo"]["tasks"]
    assert "segv" in plugins["crasher"]["tasks"]
    assert plugins["demo"]["version"]


def test_reload_reports_the_rescan(host, fe):
    report = fe.reload(host.addr)
    assert set(report) == {"loaded", "refused", "removed", "unchanged"}
    assert report["unchanged"] >= 2 and report["loaded"] == []


def test_send_signal_by_name(host, fe):
    assert fe.send_signal(host.addr, "<status>") == "1"
    with pytest.raises(ValueError):
        fe.send_signal(host.addr, "<reboot>")


def test_taskit4_protocol_to_the_same_host(host):
    fe = host.frontend(protocol="taskit4")
    assert fe.work("add", 4, 4) == 8
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("get-error")
    assert caught.value.type == "AssertionError"


def test_values_cross_as_json(host, fe):
    assert fe.work("add", -(2**63), 0) == -(2**63)
    assert fe.work("add", 2**62, 2**62 - 1) == 2**63 - 1
    # JSON true is not an integer to the task, as in TaskIt 4.0's JSON.
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("add", True, 1)
    assert caught.value.type == "TypeError"
    # Nested replies: lists of dicts of strings and lists.
    plugins = fe.tasks(host.addr)
    assert isinstance(plugins, list) and isinstance(plugins[0]["tasks"], list)


def test_bytes_are_refused_with_a_type_error(fe):
    for bad in (b"abc", bytearray(b"abc"), memoryview(b"abc")):
        with pytest.raises(TypeError, match="JSON"):
            fe.work("echo", bad)
        with pytest.raises(TypeError, match="JSON"):
            fe.work("echo", "x", data=[bad])


def test_values_json_cannot_carry_are_refused(fe):
    with pytest.raises(TypeError, match="not JSON serializable"):
        fe.work("echo", object())
    with pytest.raises(ValueError, match="NaN"):
        fe.work("echo", math.nan)
    with pytest.raises(OverflowError):
        fe.work("add", 2**64, 1)
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="levels"):
        fe.work("echo", loop)
    with pytest.raises(TypeError, match="keys"):
        fe.work("echo", {(1, 2): 3})
    # Nothing was sent: the connection still works.
    assert fe.work("add", 1, 2) == 3


def test_bad_settings_are_refused(host):
    with pytest.raises(ValueError, match="codec"):
        FrontEnd([host.addr], codec="xml")
    with pytest.raises(ValueError, match="bincode"):
        FrontEnd([host.addr], codec="bincode")
    with pytest.raises(ValueError, match="protocol"):
        FrontEnd([host.addr], protocol="http")
    with pytest.raises(ValueError, match="timeout"):
        FrontEnd([host.addr], timeout=-1)
    with pytest.raises(TypeError, match="backend"):
        FrontEnd([42])
    with pytest.raises(ValueError, match="bad backend"):
        FrontEnd(["host:notaport"])


def test_map_and_starmap_keep_order(fe):
    assert fe.map("echo", ["a", "b", "c"]) == ["a", "b", "c"]
    pairs = [(i, i) for i in range(5000)]
    assert fe.starmap("add", pairs, in_flight=64) == [2 * i for i in range(5000)]
    with pytest.raises(BackendProcessingError):
        fe.starmap("add", [(1, 2), ("x", 1)])
    mixed = fe.starmap("add", [(1, 2), ("x", 1)], return_exceptions=True)
    assert mixed[0] == 3 and isinstance(mixed[1], BackendProcessingError)
    with pytest.raises(TypeError):
        fe.starmap("add", [5])


def test_asyncio_call(new_host):
    # Leaves calls running (a cancelled wait, a timeout): a host of its own.
    fe = new_host().frontend()

    async def main():
        assert await fe.call("add", 4, 4) == 8
        results = await asyncio.gather(*(fe.call("add", i, 1) for i in range(500)))
        assert results == [i + 1 for i in range(500)]
        with pytest.raises(BackendProcessingError) as caught:
            await fe.call("get-error")
        assert caught.value.type == "AssertionError"
        assert await fe.call("greet", "Ada", excited=True) == "Hello, Ada!"
        # A cancelled wait leaves the frontend working.
        slow = asyncio.ensure_future(fe.call("wait-double", 200))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        with pytest.raises(CallTimeoutError):
            await fe.with_options(timeout=0.05).call("wait-double", 1000)
        return await fe.call("add", 1, 1)

    assert asyncio.run(main()) == 2
    # A second loop gets a bridge of its own.
    assert asyncio.run(main()) == 2


def test_asyncio_from_two_loops_in_two_threads(fe):
    out = {}

    def run(n):
        async def main():
            return await asyncio.gather(*(fe.call("add", n, i) for i in range(200)))

        out[n] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out[n] == [n + i for i in range(200)] for n in range(4))


def test_ctrl_c_interrupts_a_wait(new_host):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    host = new_host()
    fe, watcher = host.frontend(), host.frontend()

    def interrupt():
        wait_until("the call to run", lambda: watcher.get_tasks(host.addr) == "2")
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    # If the wait could not be interrupted this would end in
    # CallTimeoutError, not KeyboardInterrupt.
    with pytest.raises(KeyboardInterrupt):
        fe.with_options(timeout=120).work("sleep-forever")
    t.join()
    assert fe.work("add", 1, 1) == 2


def test_with_options_refuses_unknown_settings(fe):
    with pytest.raises(TypeError, match="retries"):
        fe.with_options(retries=3)
    with pytest.raises(ValueError, match="timeout"):
        fe.with_options(timeout=0)


def test_asyncio_finds_a_host_replaced_while_idle(new_host):
    first = new_host()
    fe = first.frontend()

    async def add(x):
        return await fe.call("add", x, 1)

    assert asyncio.run(add(1)) == 2
    fe.send_stop(first.addr)
    wait_until("the first host to stop", lambda: not first.running())
    new_host(bind=first.spec)
    assert asyncio.run(add(2)) == 3
    got = []
    fe.callback("add", got.append, None, 3, 1)
    assert fe.wait_idle(60) and got == [4]


def test_a_timed_out_call_is_cancelled_without_another_call(new_host, tmp_path):
    """The cancel a timeout sends goes out at once, not with this process's
    next call: another process sees the task end while this one is idle."""
    if os.environ.get("TASKIT_TEST_ISOLATION") == "none":
        pytest.skip("a task running in the host process cannot be stopped")
    host = new_host(extra=["--kill-grace", "1"])
    fe = host.frontend()
    with pytest.raises(CallTimeoutError):
        fe.with_options(timeout=0.2).work("sleep-forever")
    probe = (
        "import sys\nfrom taskit_native import FrontEnd\n"
        "print(FrontEnd([(sys.argv[1], int(sys.argv[2]))], admin_token=sys.argv[3])"
        ".get_tasks((sys.argv[1], int(sys.argv[2]))))"
    )

    def idle_elsewhere():
        out = subprocess.run(
            [sys.executable, "-c", probe, host.addr[0], str(host.addr[1]), host.token],
            capture_output=True, text=True, cwd=str(tmp_path),
        )
        return out.stdout.strip() == "1"

    wait_until("the host to end the cancelled task", idle_elsewhere)


def test_a_loop_closed_with_a_call_outstanding_is_freed(new_host):
    host = new_host()
    fe = host.frontend()
    loops = []

    async def main():
        loops.append(weakref.ref(asyncio.get_running_loop()))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(fe.call("wait-double", 200), 0.01)

    asyncio.run(main())
    # The reply arrives after the loop closed.
    wait_until("the call to end", lambda: fe.get_tasks(host.addr) == "1")
    fe.work("add", 1, 1)
    gc.collect()
    assert loops[0]() is None


def test_a_forked_child_makes_its_own_frontend(host):
    fe = host.frontend()
    assert fe.work("add", 1, 1) == 2
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                fe.work("add", 1, 1)
            except RuntimeError:
                try:
                    fe.wait_idle(1)
                    raise SystemExit(3)
                except RuntimeError:
                    pass
                # Collecting the parent's frontend here leaves the parent's
                # runtime alone.
                del fe
                gc.collect()
                mine = host.frontend()
                ok = mine.work("add", 2, 2) == 4


                async def add():
                    return await mine.call("add", 3, 3)

                ok = ok and asyncio.run(add()) == 6
                got = []
                mine.callback("add", got.append, None, 4, 4)
                ok = ok and mine.wait_idle(60) and got == [8]
                code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    # The parent's frontend is unharmed.
    assert [fe.work("add", i, 1) for i in range(50)] == [i + 1 for i in range(50)]


def test_exiting_with_callbacks_pending_is_quiet(new_host, tmp_path):
    """Callbacks still pending when the interpreter exits are dropped, not a
    panic on a callback thread."""
    host = new_host()
    script = (
        "import sys\nfrom taskit_native import FrontEnd\n"
        "fe = FrontEnd([(sys.argv[1], int(sys.argv[2]))])\n"
        "for _ in range(20): fe.callback('wait-double', print, None, 300)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, host.addr[0], str(host.addr[1])],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "panicked" not in out.stderr, out.stderr
