#!/usr/bin/python3
"""What jitd's user cannot do to jitlb, jitlb's MAC key file, and revocations
across restarts (docs/security.md, sections 2, 3 and 5), with the real daemons:
jitlb (root) on a net_null port, jitd as user jitd, production-like directories
(jitlb's state file in a root-owned 0755 directory, jitd's cmd file in its own).

  - the MAC key file: jitlb refuses one that group or others may read or write,
    and one that is not 32 bytes, naming the file and what to do; it exits
    before it creates its state file or starts a port, and leaves the file as
    it was. A good key: jitlb runs.
  - user jitd (in group jitlb, as scripts/setup makes it) reads jitlb's state
    file but cannot open it for writing (EACCES), map it writable, truncate,
    chmod, unlink or replace it; jitd runs on it all the same.
  - a revocation jitlb never received: jitlb is killed, a grant is revoked (jitd
    acknowledges it), jitd is killed and its cmd file (the ring the Revoke may
    sit in) taken away, jitlb comes back with the grant in its table; the
    restarted jitd re-sends the revocation on reconcile and the grant leaves
    jitlb's table for its revoked set; another grant stays active.

Usage: test_jitlb_trust.py JITD JITCTL JITLB
  (as root, with the users jitd and jitlb of scripts/setup; exit 77 = skipped:
  not root, no such users, or jitlb cannot start a DPDK EAL)
"""
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jitd_testlib import FAILURES, SKIP, check, jitctl, need_root, parsed, wait_for  # noqa: E402
from test_faults import GrantTableView, eal_memory  # noqa: E402  (the state file's layout, once)

JITD, JITCTL, JITLB = sys.argv[1:4]
need_root("DPDK EAL, setpriv")
try:
    JITD_USER = pwd.getpwnam("jitd")
    JITLB_GROUP = grp.getgrnam("jitlb")
except KeyError:
    print("skipped: needs the users jitd and jitlb (run scripts/setup)")
    sys.exit(SKIP)

INSTANCE = f"trust{os.getpid()}"
WORK = tempfile.mkdtemp(prefix=f"{INSTANCE}.")
os.chmod(WORK, 0o755)
LB_DIR = f"{WORK}/jitlb"      # root 0755: jitlb's state file
JITD_DIR = f"{WORK}/jitd"     # jitd 0755: its cmd file, socket and state
STATE_FILE = f"{LB_DIR}/jitlb-{INSTANCE}.state"
SOCK = f"{JITD_DIR}/jitd.sock"
MAC_KEY = f"{WORK}/jitlb.mackey"
EAL_MEMORY = eal_memory()
procs = {}
runs = 0


def ctl(*args):
    return jitctl(JITCTL, SOCK, args)


def ctl_json(*args):
    return parsed(*ctl("--json", *args))


def set_up():
    os.mkdir(LB_DIR, 0o755)
    os.mkdir(JITD_DIR, 0o755)
    os.chown(JITD_DIR, JITD_USER.pw_uid, JITD_USER.pw_gid)
    for name in ("issuer", "audit"):
        rc, out, err = ctl("keygen", "--out", f"{WORK}/{name}.key")
        if rc != 0:
            raise RuntimeError(f"jitctl keygen: {out}{err}")
        os.chown(f"{WORK}/{name}.key", JITD_USER.pw_uid, JITD_USER.pw_gid)
    shutil.copy(f"{WORK}/issuer.key.pub", f"{WORK}/issuers.pub")
    os.chmod(f"{WORK}/issuers.pub", 0o644)
    Path(f"{WORK}/jitd.toml").write_text(f"""
instance = "{INSTANCE}"
state_dir = "{JITD_DIR}/state"
socket = "{SOCK}"
socket_mode = "0600"
issuer_key = "{WORK}/issuer.key"
audit_key = "{WORK}/audit.key"
cmd_file = "{JITD_DIR}/jitlb-{INSTANCE}.cmd"
state_file = "{STATE_FILE}"
jitlb_user = "root"
[policy]
[[policy.rule]]
name = "none"
services = ["web"]
users = ["nobody"]
sources = ["198.51.100.0/24"]
max_duration = "1h"
[[service]]
name = "web"
mode = "ipip"
vips = [{{address = "203.0.113.10", port = 80, protocol = "tcp"}}]
backends = [{{id = "w1", address = "10.0.0.1"}}]
""")
    os.chown(f"{WORK}/jitd.toml", 0, JITD_USER.pw_gid)
    os.chmod(f"{WORK}/jitd.toml", 0o640)
    Path(f"{WORK}/jitlb.toml").write_text(f"""
instance = "{INSTANCE}"
addresses = ["192.0.2.10"]
[[port]]
name = "wan"
device = "net_null{os.getpid() % 1000},no-rx=1"
mac = "02:00:00:00:00:01"
next_hop_mac = "02:00:00:00:00:fe"
[grants]
issuer_keys = "{WORK}/issuers.pub"
mac_key = "{MAC_KEY}"
capacity = 1024
[encap]
outer_source_v4 = "10.255.0.0/16"
[region]
dir = "{LB_DIR}"
cmd_dir = "{JITD_DIR}"
cmd_owner = "jitd"
""")
    os.chmod(f"{WORK}/jitlb.toml", 0o644)


def spawn_jitlb():
    global runs
    runs += 1
    log = f"{WORK}/jitlb{runs}.log"
    with open(log, "w") as f:
        p = subprocess.Popen([JITLB, "-l", "0,1", "--no-pci", *EAL_MEMORY, f"--file-prefix={INSTANCE}",
                              "--log-level=lib.eal:error", "--", "--config", f"{WORK}/jitlb.toml"],
                             stdout=f, stderr=subprocess.STDOUT)
    procs["jitlb"] = p
    return p, log


def start_jitlb():
    p, log = spawn_jitlb()
    deadline = time.time() + 30
    while time.time() < deadline and p.poll() is None:
        if "jitlb: running" in Path(log).read_text(errors="replace"):
            # jitlb runs as root here: give its state file the group jitlb, as a
            # jitlb running as user jitlb would create it (jitd is in that group).
            os.chown(STATE_FILE, -1, JITLB_GROUP.gr_gid)
            return p
        time.sleep(0.01)
    text = Path(log).read_text(errors="replace")
    if "EAL init failed" in text:
        raise Skipped(f"jitlb cannot start a DPDK EAL here:\n{text[-1500:]}")
    raise RuntimeError(f"jitlb did not start:\n{text[-3000:]}")


def start_jitd():
    log = open(f"{WORK}/jitd.log", "a")
    p = subprocess.Popen(["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", JITD, "-c",
                          f"{WORK}/jitd.toml"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    procs["jitd"] = p
    deadline = time.time() + 20
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(SOCK) and ctl("status")[0] == 0:
            return p
        time.sleep(0.02)
    raise RuntimeError("jitd did not start:\n" + Path(f"{WORK}/jitd.log").read_text()[-3000:])


def kill(name):
    p = procs.get(name)
    if p and p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()


class Skipped(Exception):
    pass


def mac_key_checks():
    good = os.urandom(32)
    cases = [(good, 0o640, ("open to group or others (mode 0640)", f"chmod 600 {MAC_KEY}")),
             (good, 0o604, ("open to group or others (mode 0604)", f"chmod 600 {MAC_KEY}")),
             (good, 0o620, ("open to group or others (mode 0620)", f"chmod 600 {MAC_KEY}")),
             (good[:31], 0o600, ("must hold exactly 32 bytes, not 31",)),
             (good + b"\n", 0o600, ("must hold exactly 32 bytes, not 33",))]
    for data, mode, words in cases:
        Path(MAC_KEY).write_bytes(data)
        os.chmod(MAC_KEY, mode)
        p, log = spawn_jitlb()
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        said = Path(log).read_text(errors="replace")
        what = f"MAC key of {len(data)} bytes, mode {mode:04o}"
        if "EAL init failed" in said:
            raise Skipped(f"jitlb cannot start a DPDK EAL here:\n{said[-1500:]}")
        check(rc == 1 and MAC_KEY in said and all(w in said for w in words),
              f"{what}: jitlb exits 1 naming the file and what to do", f"rc {rc}: {said.strip()[-600:]}")
        check("running" not in said and not os.path.exists(STATE_FILE),
              f"{what}: refused before a state file or a running data plane exists", said[-600:])
        check(Path(MAC_KEY).read_bytes() == data and (os.stat(MAC_KEY).st_mode & 0o777) == mode,
              f"{what}: the file is left as it was")
    os.unlink(MAC_KEY)
    # A symlink to a good key, and a good key of another user: refused too
    # (the file is judged by the descriptor jitlb reads, opened O_NOFOLLOW).
    elsewhere = f"{WORK}/elsewhere.mackey"
    Path(elsewhere).write_bytes(good)
    os.chmod(elsewhere, 0o600)
    for what, make, words in (
            ("MAC key that is a symlink to a 0600 key", lambda: os.symlink(elsewhere, MAC_KEY),
             ("is a symbolic link",)),
            ("MAC key owned by user jitd", lambda: (Path(MAC_KEY).write_bytes(good), os.chmod(MAC_KEY, 0o600),
                                                    os.chown(MAC_KEY, JITD_USER.pw_uid, -1)),
             (f"belongs to uid {JITD_USER.pw_uid}", "chown"))):
        make()
        p, log = spawn_jitlb()
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        said = Path(log).read_text(errors="replace")
        check(rc == 1 and MAC_KEY in said and all(w in said for w in words) and not os.path.exists(STATE_FILE),
              f"{what}: jitlb exits 1 naming the file and why, before any state file", f"rc {rc}: {said.strip()[-600:]}")
        os.unlink(MAC_KEY)
    check(Path(elsewhere).read_bytes() == good, "the symlink's target is left as it was")
    # The first start makes one, 0600.


def state_file_checks():
    st = os.stat(STATE_FILE)
    check(st.st_uid == 0 and (st.st_mode & 0o777) == 0o640, "jitlb's state file is root:jitlb 0640",
          f"{st.st_uid}:{st.st_gid} {st.st_mode & 0o777:04o}")
    key = os.stat(MAC_KEY)
    check(key.st_mode & 0o777 == 0o600 and key.st_size == 32, "jitlb made its MAC key file: 32 bytes, 0600")
    probe = f"""
import errno, json, mmap, os
path, out = {STATE_FILE!r}, {{}}
def errname(e): return errno.errorcode.get(e.errno, str(e.errno))
for name, flags in (("O_RDONLY", os.O_RDONLY), ("O_RDWR", os.O_RDWR), ("O_WRONLY", os.O_WRONLY),
                    ("O_WRONLY|O_TRUNC", os.O_WRONLY | os.O_TRUNC)):
    try:
        os.close(os.open(path, flags)); out[name] = "ok"
    except OSError as e:
        out[name] = errname(e)
fd = os.open(path, os.O_RDONLY)
try:
    mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE); out["mmap_write"] = "ok"
except OSError as e:
    out["mmap_write"] = errname(e)
os.close(fd)
for name, call in (("truncate", lambda: os.truncate(path, 0)), ("chmod", lambda: os.chmod(path, 0o666)),
                   ("unlink", lambda: os.unlink(path)), ("replace", lambda: os.rename({JITD_DIR!r} + "/x", path)),
                   ("create_beside", lambda: os.close(os.open(path + ".new", os.O_CREAT | os.O_WRONLY, 0o600)))):
    try:
        if name == "replace":
            open({JITD_DIR!r} + "/x", "w").close()
        call(); out[name] = "ok"
    except OSError as e:
        out[name] = errname(e)
print(json.dumps(out))
"""
    r = subprocess.run(["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", sys.executable, "-c", probe],
                       capture_output=True, text=True, timeout=30)
    try:
        got = json.loads(r.stdout)
    except json.JSONDecodeError:
        got = {}
    check(got.get("O_RDONLY") == "ok", "user jitd (in group jitlb) opens jitlb's state file read-only",
          r.stdout + r.stderr)
    for name, want in (("O_RDWR", "EACCES"), ("O_WRONLY", "EACCES"), ("O_WRONLY|O_TRUNC", "EACCES"),
                       ("mmap_write", "EACCES"), ("truncate", "EACCES"), ("chmod", "EPERM"),
                       ("unlink", "EACCES"), ("create_beside", "EACCES")):
        check(got.get(name) == want, f"user jitd: {name} of jitlb's state file fails with {want}",
              f"got {got.get(name)}")
    check(got.get("replace") in ("EACCES", "EXDEV"), "user jitd cannot replace jitlb's state file (rename over it)",
          f"got {got.get('replace')}")
    st2 = os.stat(STATE_FILE)
    check(st2.st_ino == st.st_ino and st2.st_size == st.st_size and (st2.st_mode & 0o777) == 0o640,
          "jitlb's state file is unchanged")
    maps = Path(f"/proc/{procs['jitd'].pid}/maps").read_text()
    mapped = [l for l in maps.splitlines() if l.endswith(STATE_FILE)]
    check(mapped and all(l.split()[1].startswith("r-") for l in mapped),
          "jitd (as user jitd) maps the state file read-only and only so")


def key_file_checks():
    """The issuer key file decides what jitlb trusts: user jitd can read it (it
    signs with its own secret key) but cannot change it, in place or by
    replacing it, so a compromised jitd cannot add a key."""
    path = f"{WORK}/issuers.pub"
    before = Path(path).read_bytes()
    probe = f"""
import errno, json, os
path, out = {path!r}, {{}}
def errname(e): return errno.errorcode.get(e.errno, str(e.errno))
for name, call in (("O_WRONLY", lambda: os.close(os.open(path, os.O_WRONLY))),
                   ("O_APPEND", lambda: os.close(os.open(path, os.O_WRONLY | os.O_APPEND))),
                   ("truncate", lambda: os.truncate(path, 0)), ("chmod", lambda: os.chmod(path, 0o666)),
                   ("unlink", lambda: os.unlink(path)),
                   ("create_beside", lambda: os.close(os.open(path + ".new", os.O_CREAT | os.O_WRONLY, 0o600)))):
    try:
        call(); out[name] = "ok"
    except OSError as e:
        out[name] = errname(e)
print(json.dumps(out))
"""
    r = subprocess.run(["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", sys.executable, "-c", probe],
                       capture_output=True, text=True, timeout=30)
    try:
        got = json.loads(r.stdout)
    except json.JSONDecodeError:
        got = {}
    for name, want in (("O_WRONLY", "EACCES"), ("O_APPEND", "EACCES"), ("truncate", "EACCES"),
                       ("chmod", "EPERM"), ("unlink", "EACCES"), ("create_beside", "EACCES")):
        check(got.get(name) == want, f"user jitd: {name} of the issuer key file fails with {want}",
              f"got {got.get(name)}: {r.stdout}{r.stderr}")
    check(Path(path).read_bytes() == before and (os.stat(path).st_mode & 0o777) == 0o644,
          "the issuer key file is unchanged")


def revocation_checks():
    grants = {}
    for subject, source in (("revoked-while-away", "198.51.100.7"), ("kept", "198.51.100.8")):
        rc, j, err = ctl_json("grant", "web", "--source", source, "--for", "30m", "--subject", subject)
        if not check(rc == 0, f"a direct grant for {subject}", err):
            return
        grants[subject] = j["grant"]["id"]
    gone, kept = grants["revoked-while-away"], grants["kept"]

    def states():
        rc, j, _ = ctl_json("ls", "grants", "--all")
        return {g["id"]: g["state"] for g in j.get("grants", [])} if rc == 0 else {}

    def table():
        view = GrantTableView(STATE_FILE)
        try:
            live, revoked, _ = view.stable_read()
        finally:
            view.close()
        return live, revoked

    check(wait_for(lambda: all(states().get(g) == "active" for g in grants.values())
                   and all(g in table()[0] for g in grants.values()), 10),
          "both grants are active in jitd and in jitlb's table")

    kill("jitlb")
    rc, _, err = ctl("revoke", gone, "--reason", "while jitlb is away")
    check(rc == 0 and states().get(gone) == "revoked", "jitlb down: jitd acknowledges the revocation", err)
    kill("jitd")  # and what it meant to send again with it
    # The Revoke may still sit in jitd's command ring, which a new jitd resets
    # at start (a new epoch). Take the file away, so that jitlb, back before
    # jitd, cannot read it either: jitlb has now missed the revocation.
    os.rename(f"{JITD_DIR}/jitlb-{INSTANCE}.cmd", f"{WORK}/old.cmd")
    start_jitlb()
    live, revoked = table()
    check(gone in live and gone not in revoked,
          "the premise: jitlb comes back with the grant in its table (it never got the revocation)")
    start_jitd()
    ok = wait_for(lambda: (lambda t: gone not in t[0] and gone in t[1] and kept in t[0])(table()), 10)
    live, revoked = table()
    check(ok, "the restarted jitd re-sends the revocation: the grant leaves jitlb's table for its revoked set, "
          "the other stays", f"live {sorted(live)}, revoked {sorted(revoked)}")
    check(wait_for(lambda: states().get(gone) == "revoked" and states().get(kept) == "active", 5),
          "jitd: revoked stays revoked, the other active", str(states()))
    rc, j, _ = ctl_json("audit", "tail", "-n", "200")
    lines = [l if isinstance(l, dict) else json.loads(l) for l in j.get("lines", [])]
    reconciles = [l for l in lines if l["action"] == "jitlb.reconcile"]
    check(reconciles and reconciles[-1]["detail"]["revocations"] >= 1,
          "the audit log's jitlb.reconcile counts the revocation re-sent", str(reconciles[-1:]))
    check(any(l["action"] == "grant.revoked_in_jitlb" and l["object"] == gone and l["reason"] == "reconcile"
              for l in lines), "jitlb confirms it: grant.revoked_in_jitlb, reason reconcile")
    rc, out, _ = ctl("audit", "verify")
    check(rc == 0, "the audit log verifies", out)


skipped = None
try:
    set_up()
    mac_key_checks()
    start_jitlb()
    start_jitd()
    state_file_checks()
    key_file_checks()
    revocation_checks()
except Skipped as e:
    skipped = str(e)
except RuntimeError as e:
    check(False, f"the test ran to its end: {e}")
finally:
    for name in ("jitd", "jitlb"):
        kill(name)
    shutil.rmtree(f"/var/run/dpdk/{INSTANCE}", ignore_errors=True)
if skipped and not FAILURES:
    print(f"skipped: {skipped}")
    shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(SKIP)
if FAILURES:
    print(f"{len(FAILURES)} failed; files kept in {WORK}")
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".log"):
            print(f"--- {name} (tail)\n" + Path(f"{WORK}/{name}").read_text(errors="replace")[-2000:])
else:
    shutil.rmtree(WORK, ignore_errors=True)
sys.exit(1 if FAILURES else 0)
