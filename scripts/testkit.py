"""What the Python checks and benchmarks share (standard library only): a free loopback port for
a server started by the script, and the checks' `ok - …` / `FAIL - …` lines (the first failure
exits non-zero)."""
import socket


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def check(ok, what):
    print(("ok - " if ok else "FAIL - ") + what, flush=True)
    if not ok:
        raise SystemExit(1)
