"""TaskIt 4.0's frontend patterns, with only the import changed: wait,
callback, ignore, errors with type and args, many threads, admin signals."""

import sys
import threading

import pytest

from taskit_native import (
    BackendNotAvailableError,
    BackendProcessingError,
    FrontEnd,
)


def test_work_waits_for_the_result(fe):
    assert fe.work("add", 4, 4) == 8
    assert fe.work("echo", "héllo ✓") == "héllo ✓"


def test_keyword_arguments_reach_the_task(fe):
    assert fe.work("greet", "Ada") == "Hello, Ada."
    assert fe.work("greet", "Ada", greeting="Hi", excited=True) == "Hi, Ada!"


def test_unknown_task_is_a_key_error_naming_it(fe):
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("no-such-task", 1)
    assert caught.value.type == "KeyError"
    assert caught.value.args == ("no-such-task",)


def test_task_errors_carry_type_and_args(fe):
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("get-error")
    e = caught.value
    assert e.type == "AssertionError"
    assert e.args == ("this task always fails",)
    # Written as TaskIt 4.0 writes them.
    assert str(e) == "('AssertionError', ('this task always fails',))"
    assert repr(e) == "BackendProcessingError(type=AssertionError, args=('this task always fails',))"
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("add", 2**62, 2**62)
    assert caught.value.type == "OverflowError"
    with pytest.raises(BackendProcessingError) as caught:
        fe.work("add", "four", 4)
    assert caught.value.type == "TypeError"


def test_callback_gets_the_result_on_another_thread(fe):
    got = []
    done = threading.Event()
    main = threading.get_ident()

    def cb(result):
        got.append((result, threading.get_ident() != main))
        done.set()

    fe.callback("add", cb, None, 20, 22)
    assert done.wait(60)
    assert got == [(42, True)]


def test_callback_errors_go_to_error_cb(fe):
    errors = []
    fe.callback("get-error", lambda r: errors.append("ok?"), errors.append)
    assert fe.wait_idle(60)
    assert len(errors) == 1
    assert isinstance(errors[0], BackendProcessingError)
    assert errors[0].type == "AssertionError"


def test_error_cb_none_shows_falsy_silences(fe, capfd, monkeypatch):
    shown = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: shown.append(exc))
    fe.callback("get-error", lambda r: None, None)
    assert fe.wait_idle(60)
    assert len(shown) == 1 and shown[0][0] is BackendProcessingError
    assert shown[0][1].type == "AssertionError"
    for falsy in (False, 0, ""):
        fe.callback("get-error", lambda r: None, falsy)
    assert fe.wait_idle(60)
    assert len(shown) == 1
    assert capfd.readouterr().err == ""


def test_a_failing_callback_is_reported_as_unraisable(fe, monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u))

    def cb(result):
        raise ValueError("from the callback")

    fe.callback("add", cb, None, 1, 1)
    assert fe.wait_idle(60)
    assert len(seen) == 1 and isinstance(seen[0].exc_value, ValueError)
    assert seen[0].object is cb


def test_wait_idle_inside_a_callback_is_refused(fe):
    errors = []

    def cb(result):
        try:
            fe.wait_idle(1)
        except RuntimeError as e:
            errors.append(e)

    fe.callback("add", cb, None, 1, 1)
    assert fe.wait_idle(60)
    assert len(errors) == 1


def test_ignore_runs_and_drops(fe):
    fe.ignore("get-error")
    fe.ignore("add", 1, 2)
    assert fe.wait_idle(60)
    # The frontend is fine after forgetting an error.
    assert fe.work("add", 1, 2) == 3


def test_many_threads_share_one_connection(new_host):
    host = new_host()
    fe = host.frontend()
    results = {}

    def worker(n):
        results[n] = [fe.work("add", n, i) for i in range(200)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(16):
        assert results[n] == [n + i for i in range(200)]
    assert connections_to(host.addr[1]) == 1


def connections_to(port):
    """Sockets of this process connected to `port` on loopback."""
    inodes = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if int(remote.split(":")[1], 16) == port and state == "01":
            inodes.add(inode)
    import os

    mine = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            mine += 1
    return mine


def test_no_backend_is_backend_not_available(free_port):
    fe = FrontEnd([("127.0.0.1", free_port)])
    with pytest.raises(BackendNotAvailableError):
        fe.work("add", 1, 2)


def test_a_dead_backend_is_skipped(host, free_port):
    fe = FrontEnd([("127.0.0.1", free_port), host.addr])
    assert [fe.work("add", i, i) for i in range(10)] == [2 * i for i in range(10)]


def test_get_tasks_counts_or_says_down(new_host, free_port):
    host = new_host()
    fe = host.frontend()
    assert fe.get_tasks(host.addr) == "1"
    assert fe.get_tasks(host.spec) == "1"
    down = FrontEnd([("127.0.0.1", free_port)])
    assert down.get_tasks(("127.0.0.1", free_port)) == "down"
    with pytest.raises(ValueError):
        fe.get_tasks(("127.0.0.1", free_port))


def test_default_port_applies_to_bare_hosts(new_host):
    host = new_host()
    fe = FrontEnd(["127.0.0.1"], default_port=host.addr[1], admin_token=host.token)
    assert fe.backends == [host.addr]
    assert fe.work("add", 1, 1) == 2
    assert fe.get_tasks("127.0.0.1") == "1"


def test_send_stop_stops_and_send_kill_kills(new_host):
    from conftest import wait_until

    h = new_host()
    fe = h.frontend()
    fe.send_stop(h.addr)
    wait_until("the host to stop", lambda: not h.running())
    assert h.proc.returncode == 0
    h = new_host()
    fe = h.frontend()
    fe.send_kill(h.addr)
    wait_until("the host to exit", lambda: not h.running())


def test_signals_need_the_admin_token(new_host):
    h = new_host()
    fe = FrontEnd([h.addr], admin_token="wrong")
    with pytest.raises(BackendProcessingError) as caught:
        fe.send_stop(h.addr)
    assert caught.value.type == "Unauthorized"
    assert h.running()
    # <status> needs no token when the host makes its own, but this host
    # was given one: every signal needs it.
    with pytest.raises(BackendProcessingError):
        fe.get_tasks(h.addr)
    assert h.frontend().get_tasks(h.addr) == "1"


def test_a_host_replaced_between_calls_is_found_again(new_host):
    """The connection to a host that stopped while the frontend was idle is
    noticed before the next call goes out: the call reaches the new host
    instead of failing as lost."""
    from conftest import wait_until

    first = new_host()
    fe = first.frontend()
    assert fe.work("add", 1, 1) == 2
    fe.send_stop(first.addr)
    wait_until("the first host to stop", lambda: not first.running())
    second = new_host(bind=first.spec)
    assert second.addr == first.addr
    assert [fe.work("add", i, 1) for i in range(3)] == [1, 2, 3]


def test_a_local_host_own_token_is_found(new_host):
    """A host given no token file makes one; a frontend on this machine
    sends it with <stop>, as TaskIt 4.0 code expects send_stop to work."""
    from conftest import wait_until

    h = new_host(token_file=False)
    fe = FrontEnd([h.addr])
    assert fe.get_tasks(h.addr) == "1"
    fe.send_stop(h.addr)
    wait_until("the host to stop", lambda: not h.running())


def test_add_backends(new_host, free_port):
    host = new_host()
    fe = FrontEnd([("127.0.0.1", free_port)], admin_token=host.token)
    with pytest.raises(BackendNotAvailableError):
        fe.work("add", 1, 1)
    fe.add_backends(host.addr, host.addr)
    assert fe.backends == [("127.0.0.1", free_port), host.addr]
    assert fe.work("add", 1, 1) == 2
    assert fe.get_tasks(host.addr) == "1"


def test_taskit4_constructor_arguments_are_accepted(new_host):
    """FrontEnd(backends, default_port, logger, codec) as TaskIt 4.0 code
    writes it, with its own JSONCodec class."""
    host = new_host()

    class JSONCodec:  # what `from taskit.common import JSONCodec` gives
        pass

    fe = FrontEnd(["127.0.0.1"], host.addr[1], None, JSONCodec)
    assert fe.work("add", 2, 3) == 5
    with pytest.raises(TypeError, match="codec"):
        FrontEnd([host.addr], codec=object())


def test_a_flood_of_callbacks_stays_within_the_thread_bound(new_host):
    """300 callbacks whose callbacks block: at most MAX_CALLBACK_THREADS
    threads run them, and every one is delivered."""
    import glob
    import time

    from taskit_native import MAX_CALLBACK_THREADS

    host = new_host()
    fe = host.frontend()
    delivered = []
    most = [0]
    done = threading.Event()

    def count_threads():
        while not done.is_set():
            n = 0
            for comm in glob.glob("/proc/self/task/*/comm"):
                try:
                    n += open(comm).read().strip() == "taskit-callback"
                except OSError:
                    pass
            most[0] = max(most[0], n)
            time.sleep(0.005)

    counter = threading.Thread(target=count_threads)
    counter.start()

    def cb(result):
        time.sleep(0.02)  # keeps its thread busy, so the pool grows
        delivered.append(result)

    for i in range(300):
        fe.callback("add", cb, None, i, 1)
    assert fe.wait_idle(300)
    done.set()
    counter.join()
    assert sorted(delivered) == [i + 1 for i in range(300)]
    assert 1 <= most[0] <= MAX_CALLBACK_THREADS
