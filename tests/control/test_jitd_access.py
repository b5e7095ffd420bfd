#!/usr/bin/python3
"""Who may talk to jitd, and who may configure it (docs/security.md, section 2).

  - jitd's socket gets `socket_mode` 0660 and group `socket_group`: the kernel
    refuses connect() to a user outside the group (jitctl: exit 3, Permission
    denied), and lets a member in;
  - `push` of a grant signed elsewhere by a member who is not an administrator
    is refused as forbidden and leaves nothing behind (no grant, no
    grant.import line); root's push of the same text is accepted;
  - a jitd.toml that group or others may write is refused at start (and by
    --check) with the mode and the chmod that fixes it, before jitd creates its
    state directory or socket; 0640 and 0644 are accepted.

The users are real: nobody, through setpriv, with only the groups given
(--clear-groups), so group membership comes from the effective gid alone.
jitd runs as user jitd when it exists (scripts/setup), as in production.

Usage: test_jitd_access.py JITD JITCTL      (as root; exit 77 = skipped)
"""
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jitd_testlib import FAILURES, check, jitctl, need_root, parsed  # noqa: E402

JITD, JITCTL = sys.argv[1], sys.argv[2]
need_root("setpriv to other users")

try:
    JITD_USER = pwd.getpwnam("jitd")
    SOCKET_GROUP = grp.getgrgid(JITD_USER.pw_gid).gr_name  # jitd is in its own group
except KeyError:
    JITD_USER = None
    SOCKET_GROUP = "daemon"
    print("note: no user jitd (run scripts/setup): jitd runs as root in this test")
GID = grp.getgrnam(SOCKET_GROUP).gr_gid
NOBODY = pwd.getpwnam("nobody")

WORK = tempfile.mkdtemp(prefix="jitd-access.")
os.chmod(WORK, 0o755)
SOCK = f"{WORK}/jitd.sock"
procs = []


def ctl(*args, as_group=None, stdin=None):
    """jitctl as root, or as nobody whose only group is `as_group`."""
    setpriv = ["--reuid=nobody", f"--regid={as_group}", "--clear-groups"] if as_group else None
    return jitctl(JITCTL, SOCK, args, setpriv, stdin)


def ctl_json(*args, as_group=None, stdin=None):
    return parsed(*ctl("--json", *args, as_group=as_group, stdin=stdin))


def jitd_cmd(config, *extra):
    cmd = [JITD, "-c", config, *extra]
    if JITD_USER:
        cmd = ["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", *cmd]
    return cmd


def config_text(name):
    return f"""
instance = "access{os.getpid()}"
state_dir = "{WORK}/{name}-state"
socket = "{WORK}/{name}.sock"
socket_mode = "0660"
socket_group = "{SOCKET_GROUP}"
issuer_key = "{WORK}/issuer.key"
audit_key = "{WORK}/audit.key"
cmd_file = "{WORK}/jitlb.cmd"
state_file = "{WORK}/jitlb.state"
jitlb_user = "root"
[policy]
[[policy.rule]]
name = "web"
services = ["web"]
users = ["nobody"]
sources = ["198.51.100.0/24"]
max_duration = "1h"
[[service]]
name = "web"
vips = [{{address = "203.0.113.10", port = 80, protocol = "tcp"}}]
backends = [{{id = "w1", address = "10.0.0.1"}}]
"""


def write_config(name, mode):
    path = f"{WORK}/{name}.toml"
    with open(path, "w") as f:
        f.write(config_text(name))
    os.chmod(path, mode)
    return path


def set_up():
    for name in ("issuer", "audit", "offline"):
        rc, out, err = ctl("keygen", "--out", f"{WORK}/{name}.key")
        if rc != 0:
            raise RuntimeError(f"jitctl keygen: {out}{err}")
        if JITD_USER and name != "offline":
            os.chown(f"{WORK}/{name}.key", JITD_USER.pw_uid, JITD_USER.pw_gid)
    if JITD_USER:
        os.chown(WORK, JITD_USER.pw_uid, JITD_USER.pw_gid)


def start_jitd():
    path = write_config("jitd", 0o640)
    if JITD_USER:
        os.chown(path, 0, JITD_USER.pw_gid)  # root:jitd 0640, as docs/operations.md has it
    log = open(f"{WORK}/jitd.log", "w")
    p = subprocess.Popen(jitd_cmd(path), stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    deadline = time.time() + 20
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(SOCK) and ctl("status")[0] == 0:
            return p
        time.sleep(0.02)
    raise RuntimeError("jitd did not start:\n" + open(f"{WORK}/jitd.log").read()[-3000:])


def socket_checks():
    st = os.stat(SOCK)
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GID,
          f"the socket is mode 0660, group {SOCKET_GROUP}",
          f"mode {stat.S_IMODE(st.st_mode):04o}, gid {st.st_gid}")
    outsider_group = grp.getgrgid(NOBODY.pw_gid).gr_name
    check(GID != NOBODY.pw_gid and GID not in os.getgrouplist("nobody", NOBODY.pw_gid),
          f"nobody is not in {SOCKET_GROUP} (the test's premise)")
    for args in (("status",), ("ls", "grants"), ("request", "web", "--source", "198.51.100.7", "--for", "5m")):
        rc, out, err = ctl(*args, as_group=outsider_group)
        check(rc == 3 and "Permission denied" in err and "socket_group" in err,
              f"nobody, not in {SOCKET_GROUP}: `jitctl {args[0]}` cannot connect (exit 3, Permission denied)",
              f"rc {rc}: {out}{err}")
    # The same user with the socket's group as its only group is let in, as a
    # caller jitd knows by uid (not an administrator).
    rc, j, err = ctl_json("status", as_group=SOCKET_GROUP)
    check(rc == 0 and j.get("caller", {}).get("user") == "nobody" and j["caller"]["admin"] is False,
          f"nobody with group {SOCKET_GROUP} connects, and jitd sees nobody, not an administrator",
          f"rc {rc}: {j}{err}")


def connection_limit_checks():
    """jitd serves at most 128 connections (kMaxClients) and closes each one after
    5 s (kClientTimeoutMs), answered or not: a user of the socket who holds 128
    idle ones gets the next caller's connection closed unanswered (jitctl exit
    3, at once, not a hang) for at most those 5 s, and then jitd serves again."""
    idle = []
    try:
        for _ in range(128):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(SOCK)
            idle.append(c)
        time.sleep(0.5)  # accepted by jitd's loop
        t0 = time.monotonic()
        rc, out, err = ctl("status")
        took = time.monotonic() - t0
        check(rc == 3 and took < 3, "with 128 idle connections held, the next `jitctl status` is closed "
              "unanswered (exit 3) without waiting", f"rc {rc} after {took:.1f} s: {out}{err}")
        for c in idle:
            c.settimeout(8)

        def closed(c):
            try:
                return c.recv(1) == b""
            except OSError:
                return True
        t0 = time.monotonic()
        n_closed = sum(closed(c) for c in idle)
        took = time.monotonic() - t0
        check(n_closed == 128 and took < 7.5, "jitd closes the 128 idle connections after its 5 s client timeout",
              f"{n_closed} closed in {took:.1f} s")
    finally:
        for c in idle:
            c.close()
    rc, out, err = ctl("status")
    check(rc == 0, "then `jitctl status` is answered again", f"rc {rc}: {out}{err}")
    check(all(p.poll() is None for p in procs), "jitd is still running")


def push_checks():
    rc, text, err = ctl("sign", "--key", f"{WORK}/offline.key", "--service", "web", "--source",
                        "198.51.100.9", "--for", "20m", "--subject", "pushed-by-nobody")
    text = text.strip()
    check(rc == 0 and text.startswith("jitlb-grant1:"), "a grant signed offline", err)
    rc, j, _ = ctl_json("inspect", text)
    gid = j.get("grant", j).get("grant_id") or j.get("grant_id") or j.get("id")
    for args, stdin in (((text,), None), (("-",), text + "\n")):
        rc, j, err = ctl_json("push", *args, as_group=SOCKET_GROUP, stdin=stdin)
        e = j.get("error", {})
        check(rc == 1 and e.get("code") == "forbidden" and "push" in e.get("message", "")
              and "administrators" in e.get("message", ""),
              f"push{' from stdin' if stdin else ''} by nobody (a member, not an administrator) is "
              f"refused as forbidden", f"rc {rc}: {j}{err}")
    rc, j, _ = ctl_json("ls", "grants", "--all")
    check(rc == 0 and not j["grants"], "the refused push left no grant", str(j.get("grants"))[:300])
    rc, j, _ = ctl_json("audit", "tail", "-n", "100")
    check(rc == 0 and not any('"grant.import"' in l for l in j.get("lines", [])),
          "the refused push left no grant.import line")
    rc, j, err = ctl_json("push", text)
    check(rc == 0 and j["grant"]["subject"] == "pushed-by-nobody",
          "root pushes the same text: accepted (the refusal was about the caller)", f"rc {rc}: {j}{err}")
    if gid:
        check(j.get("grant", {}).get("id") == gid, "the accepted grant is the one signed offline")


def config_mode_checks():
    for mode in (0o664, 0o646, 0o666, 0o620, 0o602):
        path = write_config(f"mode{mode:o}", mode)
        if JITD_USER:
            os.chown(path, 0, JITD_USER.pw_gid)
        for extra in ((), ("--check",)):
            try:
                r = subprocess.run(jitd_cmd(path, *extra), capture_output=True, text=True, timeout=10)
                rc, said = r.returncode, r.stdout + r.stderr
            except subprocess.TimeoutExpired as e:  # jitd started: run() killed it
                rc, said = None, f"still running after 10 s: {e.stderr or ''}"
            check(rc == 1 and path in said and "group or others may write it" in said
                  and f"mode {mode:04o}" in said and f"chmod go-w {path}" in said,
                  f"jitd.toml mode {mode:04o}: jitd {' '.join(extra) or 'start'} refuses it with the mode "
                  "and the chmod", f"rc {rc}: {said.strip()}")
        name = f"mode{mode:o}"
        check(not os.path.exists(f"{WORK}/{name}-state") and not os.path.exists(f"{WORK}/{name}.sock"),
              f"jitd.toml mode {mode:04o}: refused before any state directory or socket exists")
    for mode in (0o640, 0o644):
        path = write_config(f"ok{mode:o}", mode)
        if JITD_USER:
            os.chown(path, 0, JITD_USER.pw_gid)
        r = subprocess.run(jitd_cmd(path, "--check"), capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and ": ok" in r.stdout,
              f"jitd.toml mode {mode:04o} is accepted (--check)", r.stdout + r.stderr)


try:
    set_up()
    config_mode_checks()
    start_jitd()
    socket_checks()
    connection_limit_checks()
    push_checks()
except RuntimeError as e:
    check(False, f"the test ran to its end: {e}")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
if FAILURES:
    print(f"{len(FAILURES)} failed; files kept in {WORK}")
    if os.path.exists(f"{WORK}/jitd.log"):
        print("--- jitd.log (tail)\n" + open(f"{WORK}/jitd.log").read()[-3000:])
else:
    shutil.rmtree(WORK, ignore_errors=True)
sys.exit(1 if FAILURES else 0)
