#!/usr/bin/python3
"""jitd when its state directory cannot be written: a full disk, and a read-only one.

Mode `full` (a tmpfs of a few MiB mounted on the state directory):
  - grants, requests, pushes and revocations acknowledged while there is room;
  - the disk filled up (a file written until ENOSPC): every state-changing call
    (grant, request, push, revoke, service add) fails with an error that says
    the disk is full, reads (status, ls) still answer, jitd keeps running, and
    nothing a refused call tried is visible (no grant of it, the revoked grant
    still live);
  - room made again: the next call succeeds without a restart;
  - a kill -9 and a restart: every acknowledged grant is there in its state,
    and the audit log verifies (through jitd, and offline with the stored head);
  - SIGTERM while the disk is full: jitd stops cleanly (exit 0) and says the
    stop could not be recorded;
  - the state directory mounted read-only: jitd refuses to start and says why;
    mounted writable again, it starts with everything acknowledged.
Mode `readonly` (ext4 on a loop device, mounted errors=remount-ro): the
filesystem turns read-only under a running jitd (an ext4 error triggered
through sysfs, as a failing disk does), then the same: calls fail with a clear
error, jitd keeps answering reads, and after an fsck and a restart on the
repaired filesystem every acknowledged grant is there and the log verifies
(SIGTERM on the read-only disk: a clean stop, as above).

Everything runs in a private mount namespace (the script re-executes itself
under `unshare -m`), so the mounts vanish with it even if the test dies.
jitd runs as user jitd when it exists (scripts/setup), as in production.

Usage: test_jitd_storage.py JITD JITCTL full|readonly
  (as root; exit 77 = skipped: not root, or, for readonly, no loop device or ext4)
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jitd_testlib import FAILURES, SKIP, check, jitctl, need_root, parsed  # noqa: E402

JITD, JITCTL, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
need_root("mounts, setpriv")
if MODE not in ("full", "readonly"):
    sys.exit(f"unknown mode {MODE!r}: full or readonly")
if os.environ.get("JITD_STORAGE_NS") != "1":
    env = dict(os.environ, JITD_STORAGE_NS="1")
    try:
        os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", sys.executable,
                               *sys.argv], env)
    except OSError as e:
        print(f"FAIL cannot run unshare for a private mount namespace: {e}")
        sys.exit(1)

try:
    JITD_USER = pwd.getpwnam("jitd")
except KeyError:
    JITD_USER = None
    print("note: no user jitd (run scripts/setup): jitd runs as root in this test")

WORK = tempfile.mkdtemp(prefix=f"jitd-storage-{MODE}.")
os.chmod(WORK, 0o755)
STATE = f"{WORK}/state"
SOCK = f"{WORK}/jitd.sock"
LOG = f"{WORK}/jitd.log"
procs = []
mounted = []
loop_image = f"{WORK}/disk.img"


def run(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, **kw)


def ctl(*args, user=None, stdin=None):
    setpriv = ["--reuid=nobody", "--regid=nogroup", "--init-groups"] if user else None
    return jitctl(JITCTL, SOCK, args, setpriv, stdin)


def ctl_json(*args, user=None, stdin=None):
    return parsed(*ctl("--json", *args, user=user, stdin=stdin))


def spawn_jitd():
    log = open(LOG, "a")
    log.write("--- start\n")
    log.flush()
    cmd = [JITD, "-c", f"{WORK}/jitd.toml"]
    if JITD_USER:
        cmd = ["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", *cmd]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    procs.append(p)
    return p


def start_jitd():
    p = spawn_jitd()
    deadline = time.time() + 20
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(SOCK) and ctl("status")[0] == 0:
            return p
        time.sleep(0.02)
    raise RuntimeError("jitd did not start:\n" + open(LOG).read()[-3000:])


def log_since(mark):
    return open(LOG).read()[mark:]


def grants():
    rc, j, _ = ctl_json("ls", "grants", "--all")
    return {g["id"]: g for g in j.get("grants", [])} if rc == 0 else None


def own_state_dir():
    if JITD_USER:
        os.chown(STATE, JITD_USER.pw_uid, JITD_USER.pw_gid)
    os.chmod(STATE, 0o750)


def set_up():
    for name in ("issuer", "audit", "offline"):
        rc, out, err = ctl("keygen", "--out", f"{WORK}/{name}.key")
        if rc != 0:
            raise RuntimeError(f"jitctl keygen: {out}{err}")
        if JITD_USER and name != "offline":
            os.chown(f"{WORK}/{name}.key", JITD_USER.pw_uid, JITD_USER.pw_gid)
    with open(f"{WORK}/jitd.toml", "w") as f:
        f.write(f"""
instance = "storage{os.getpid()}"
state_dir = "{STATE}"
socket = "{SOCK}"
socket_mode = "0666"
issuer_key = "{WORK}/issuer.key"
audit_key = "{WORK}/audit.key"
audit_checkpoint_lines = 5
cmd_file = "{WORK}/jitlb.cmd"
state_file = "{WORK}/jitlb.state"
jitlb_user = "root"
request_rate = 1000
request_burst = 1000
[policy]
[[policy.rule]]
name = "auto"
services = ["web"]
users = ["nobody"]
sources = ["198.51.100.0/24"]
max_duration = "1h"
approval = "auto"
[[service]]
name = "web"
mode = "ipip"
vips = [{{address = "203.0.113.10", port = 80, protocol = "tcp"}}]
backends = [{{id = "w1", address = "10.0.0.1"}}]
""")
    if JITD_USER:
        os.chown(WORK, JITD_USER.pw_uid, JITD_USER.pw_gid)  # the socket and cmd file go here


class Acked:
    """What jitd acknowledged: grant id -> the state it must have after a restart."""

    def __init__(self):
        self.state = {}
        self.n = 0

    def grant(self, label):
        self.n += 1
        rc, j, err = ctl_json("grant", "web", "--source", f"198.51.100.{self.n}", "--for", "30m",
                              "--subject", label)
        if check(rc == 0, f"{label}: a direct grant is acknowledged", err):
            self.state[j["grant"]["id"]] = "ready"
            return j["grant"]["id"]
        return None

    def request(self, label):
        self.n += 1
        rc, j, err = ctl_json("request", "web", "--source", f"198.51.100.{self.n}", "--for", "10m",
                              "--reason", label, user="nobody")
        if check(rc == 0 and "grant" in j, f"{label}: an auto-approved request is acknowledged", err):
            self.state[j["grant"]["id"]] = "ready"

    def push(self, label):
        self.n += 1
        rc, text, err = ctl("sign", "--key", f"{WORK}/offline.key", "--service", "web", "--source",
                            f"198.51.100.{self.n}", "--for", "20m", "--subject", label)
        rc, j, err = ctl_json("push", text.strip())
        if check(rc == 0, f"{label}: a pushed grant is acknowledged", err):
            self.state[j["grant"]["id"]] = "ready"

    def revoke(self, gid, label):
        rc, _, err = ctl("revoke", gid, "--reason", label)
        if check(rc == 0, f"{label}: a revocation is acknowledged", err):
            self.state[gid] = "revoked"


def refused_while_broken(acked, live_gid, why_words, label):
    """Every state-changing call fails with an error naming the cause; reads answer."""
    n = acked.n
    calls = [
        ("grant", ("grant", "web", "--source", "198.51.100.200", "--for", "30m", "--subject", "refused-grant")),
        ("request", ("request", "web", "--source", "198.51.100.201", "--for", "10m", "--reason", "refused-request")),
        ("revoke", ("revoke", live_gid, "--reason", "refused-revoke")),
        ("service add", ("service", "add", "db", "--vip", "203.0.113.20:5432/tcp")),
    ]
    rc, text, _ = ctl("sign", "--key", f"{WORK}/offline.key", "--service", "web", "--source",
                      "198.51.100.202", "--for", "20m", "--subject", "refused-push")
    calls.append(("push", ("push", text.strip())))
    for name, args in calls:
        # Several times each: the first failure can leave room (a partly used
        # page) that the next one uses up; none may be acknowledged.
        for attempt in range(3):
            rc, j, err = ctl_json(*args, user="nobody" if name == "request" else None)
            msg = j.get("error", {}).get("message", "") + err
            if not check(rc == 1 and any(w in msg for w in why_words),
                         f"{label}: {name} (try {attempt + 1}) fails and says why", f"rc {rc}: {msg or j}"):
                break
            if attempt == 0:
                print(f"     {err.strip()}")
    acked.n = n
    rc, j, _ = ctl_json("status")
    check(rc == 0 and j.get("audit", {}).get("seq", 0) > 0, f"{label}: status still answers")
    g = grants()
    check(g is not None and all(gid in g for gid in acked.state), f"{label}: ls grants still answers")


def check_after_restart(acked, label):
    g = grants()
    wrong = [f"{gid}: {g.get(gid, {}).get('state', 'missing')}, expected {want}"
             for gid, want in acked.state.items()
             if gid not in (g or {}) or (g[gid]["state"] == "revoked") != (want == "revoked")]
    check(g is not None and not wrong, f"{label}: every acknowledged grant is there in its state "
          f"({len(acked.state)})", "; ".join(wrong[:5]))
    half = [x for x in (g or {}).values() if x["subject"].startswith("refused-")
            or x["state_reason"] == "refused-revoke"]
    check(not half, f"{label}: nothing of a refused call was stored", str(half[:2]))
    rc, out, err = ctl("audit", "verify")
    check(rc == 0 and "verifies" in out, f"{label}: the audit log verifies through jitd", out + err)
    rc, j, _ = ctl_json("status")
    head = f"{j['audit']['seq']}:{j['audit']['hash']}" if rc == 0 else ""
    rc, j, err = ctl_json("audit", "verify", "--file", f"{STATE}/audit.log", "--keys",
                          f"{WORK}/audit.key.pub", "--head", head)
    check(rc == 0 and j.get("verified") and j.get("signatures_verified", 0) > 0,
          f"{label}: the audit log verifies offline with the keys and the stored head", str(j) + err)
    # The log may be ahead of the database (a line written, its commit failed),
    # never behind: each such line is followed by one saying it was not stored.
    lines = [json.loads(l) for l in open(f"{STATE}/audit.log")]
    failed = {seq for l in lines if l["action"] == "store.failed" for seq in l["detail"]["seqs"]}
    issued = [l for l in lines if l["action"] in ("grant.issue", "grant.import") and l["result"] == "ok"]
    unexplained = [l["object"] for l in issued if l["object"] not in (g or {}) and l["seq"] not in failed]
    check(not unexplained, f"{label}: every grant the log says was issued is stored, or the log says "
          "its commit failed", str(unexplained[:3]))


def stop_cleanly(jitd, label):
    """SIGTERM: jitd stops with exit 0 and says the stop could not be logged."""
    mark = len(open(LOG).read())
    jitd.send_signal(signal.SIGTERM)
    try:
        rc = jitd.wait(timeout=20)
    except subprocess.TimeoutExpired:
        rc = None
    said = log_since(mark)
    check(rc == 0 and "could not record the stop" in said and "stopped" in said,
          f"{label}: SIGTERM stops jitd cleanly (exit 0), saying it could not record the stop",
          f"rc {rc}: {said[-1500:]}")


def fill(path):
    """Writes `path` until the filesystem is full; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last partial page, so no room is left
            while True:
                try:
                    n += f.write(b"\0" * size)
                except OSError:
                    break
    return n


def mount(*args):
    r = run("mount", *args)
    if r.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {r.stderr.strip()}")


def phase_full():
    os.mkdir(STATE)
    mount("-t", "tmpfs", "-o", "size=6m,mode=0750", "jitd-storage", STATE)
    mounted.append(STATE)
    own_state_dir()
    jitd = start_jitd()
    acked = Acked()
    first = acked.grant("before-1")
    acked.request("before-2")
    acked.push("before-3")
    second = acked.grant("before-4")
    acked.revoke(second, "before-revoke")

    filler = f"{STATE}/filler"
    size = fill(filler)
    print(f"     filled the state directory with {size} bytes")
    mark = len(open(LOG).read())
    refused_while_broken(acked, first, ("No space left on device", "disk is full", "database or disk is full"),
                         "disk full")
    time.sleep(0.5)  # ticks run meanwhile
    check(jitd.poll() is None, "disk full: jitd is still running", log_since(mark)[-2000:])

    os.unlink(filler)
    acked.grant("after-free")
    acked.revoke(first, "after-free revoke")
    check(jitd.poll() is None, "room again: jitd carried on without a restart")

    jitd.kill()
    jitd.wait()
    jitd = start_jitd()
    check_after_restart(acked, "disk full, then kill -9")

    # A stop while the disk is full: clean all the same.
    fill(filler)
    stop_cleanly(jitd, "disk full")
    os.unlink(filler)

    # Read-only at start: the same directory, remounted read-only.
    mount("-o", "remount,ro", STATE)
    mark = len(open(LOG).read())
    p = spawn_jitd()
    try:
        rc = p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        rc = None
    said = log_since(mark)
    check(rc not in (None, 0) and "Read-only file system" in said and f"{STATE}/" in said,
          "read-only state directory: jitd refuses to start, naming the file and the cause", said[-1500:])
    check(ctl("status")[0] == 3, "read-only state directory: nothing answers on the socket")
    mount("-o", "remount,rw", STATE)
    start_jitd()
    check_after_restart(acked, "writable again")


def phase_readonly():
    for tool in ("losetup", "mkfs.ext4", "e2fsck"):
        if not shutil.which(tool):
            raise Skip(f"{tool} is not installed")
    if "ext4" not in open("/proc/filesystems").read():
        run("modprobe", "ext4")
    subprocess.run(["truncate", "-s", "32M", loop_image], check=True)
    r = run("mkfs.ext4", "-q", "-F", loop_image)
    if r.returncode != 0:
        raise Skip(f"mkfs.ext4: {r.stderr.strip()}")
    os.mkdir(STATE)
    r = run("mount", "-o", "loop,errors=remount-ro", loop_image, STATE)
    if r.returncode != 0:
        raise Skip(f"cannot mount an ext4 image on a loop device: {r.stderr.strip()}")
    mounted.append(STATE)
    dev = os.path.basename(run("findmnt", "-no", "SOURCE", STATE).stdout.strip())
    trigger = f"/sys/fs/ext4/{dev}/trigger_fs_error"
    if not os.path.exists(trigger):
        raise Skip(f"{trigger} does not exist (kernel without it)")
    own_state_dir()
    jitd = start_jitd()
    acked = Acked()
    first = acked.grant("before-1")
    acked.request("before-2")
    acked.push("before-3")
    second = acked.grant("before-4")
    acked.revoke(second, "before-revoke")

    with open(trigger, "w") as f:
        f.write("test_jitd_storage: the state disk fails")
    opts = run("findmnt", "-no", "OPTIONS", STATE).stdout
    check("ro" in opts.split(",") or "emergency_ro" in opts, f"the state filesystem is read-only now ({opts.strip()})")
    mark = len(open(LOG).read())
    refused_while_broken(acked, first, ("Read-only file system", "Input/output error", "disk I/O error",
                                        "attempt to write a readonly database", "no more appends"),
                         "read-only disk")
    time.sleep(0.5)
    check(jitd.poll() is None, "read-only disk: jitd is still running", log_since(mark)[-2000:])

    stop_cleanly(jitd, "read-only disk")
    r = run("umount", STATE)
    if check(r.returncode == 0, "the failed filesystem unmounts", r.stderr):
        mounted.remove(STATE)
    r = run("e2fsck", "-f", "-y", loop_image)
    check(r.returncode in (0, 1), f"e2fsck repairs the image (exit {r.returncode})", r.stdout[-500:])
    mount("-o", "loop,errors=remount-ro", loop_image, STATE)
    mounted.append(STATE)
    start_jitd()
    check_after_restart(acked, "repaired disk, restart")


class Skip(Exception):
    pass


skipped = None
try:
    set_up()
    phase_full() if MODE == "full" else phase_readonly()
except Skip as e:
    skipped = str(e)
except RuntimeError as e:
    check(False, f"the test ran to its end: {e}")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for m in reversed(mounted):
        subprocess.run(["umount", "-l", m], capture_output=True)
if skipped and not FAILURES:
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"skipped: {skipped}")
    sys.exit(SKIP)
if FAILURES:
    print(f"{len(FAILURES)} failed; files kept in {WORK}")
    print("--- jitd.log (tail)\n" + open(LOG).read()[-4000:] if os.path.exists(LOG) else "")
else:
    shutil.rmtree(WORK, ignore_errors=True)
sys.exit(1 if FAILURES else 0)
