"""Runs an original TaskIt 4.0 backend. Usage: backend.py PORT"""
import sys

from taskit.backend import ADMIN_TASKS, BackEnd


def add(x, y):
    return x + y


def echo(s):
    return s


def fail():
    raise ValueError("bad value", 3)


def pair(a, b=2):
    return [a, b]


tasks = {"add": add, "echo": echo, "fail": fail, "pair": pair}
tasks.update(ADMIN_TASKS)
BackEnd(tasks, "127.0.0.1", int(sys.argv[1])).main()
