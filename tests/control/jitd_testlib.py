"""What the control-plane tests share (test_jitd_access.py, test_jitd_storage.py,
test_jitlb_trust.py): a check that records failures, the root check, jitctl
runs (optionally as another user through setpriv) and a bounded wait."""
import json
import os
import subprocess
import sys
import time

SKIP = 77
FAILURES = []  # the names of the checks that failed, in order


def check(cond, what, detail=""):
    """Prints `ok` or `FAIL` and the check's name; a failure is recorded, with `detail`."""
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
        if detail:
            print(f"     {detail}", flush=True)
    return cond


def need_root(why):
    """Exits 77 (meson's skip) unless running as root."""
    if os.geteuid() != 0:
        print(f"skipped: needs root ({why})")
        sys.exit(SKIP)


def jitctl(exe, sock, args, setpriv=None, stdin=None):
    """jitctl --socket SOCK ARGS, as root or through `setpriv` with the given
    arguments; returns (exit code, stdout, stderr)."""
    cmd = [exe, "--socket", sock, *args]
    if setpriv:
        cmd = ["setpriv", *setpriv, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=30)
    return r.returncode, r.stdout, r.stderr


def parsed(rc, out, err):
    """A --json run's output parsed: {} when empty, {"unparsed": text} when not JSON."""
    try:
        return rc, (json.loads(out) if out.strip() else {}), err
    except json.JSONDecodeError:
        return rc, {"unparsed": out}, err


def wait_for(pred, seconds):
    """Polls `pred` every 50 ms for at most `seconds`; its last answer."""
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()
