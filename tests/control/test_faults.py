#!/usr/bin/python3
"""Fault injection: kill -9 of jitd, and of jitlb under load, at random moments.

Phase 1, jitd: a client thread keeps issuing grants (`jitctl grant` as root,
and auto-approved `jitctl request` as user nobody) and revoking some, while
jitd (as user jitd) is killed with SIGKILL at random moments, at least --kills
times: a random number of calls after the restart, then a random delay, so
that kills land inside calls and between them; every fourth round the next
jitd is killed again while it starts (audit log recovery, database, reconcile).
jitlb runs on a net_null port. After each restart, once jitd and jitlb agree:
  - every grant jitctl acknowledged (exit 0) is known to jitd (`jitctl ls`);
  - every acknowledged grant whose revocation was acknowledged is revoked in
    jitd and absent from jitlb's grant table, its id in jitlb's revoked set;
  - every other acknowledged grant is active in jitd and in jitlb's table;
  - what jitd calls active is exactly what jitlb's table holds.
Every jitctl call ends with an exit code (a jitctl killed by SIGPIPE when
jitd died during its call was a bug; a socket that drops the connection makes
that case certain). At the end `jitctl audit verify` passes, through jitd and
offline (--file --keys --head).

Phase 2, jitlb: jitlb on net_pcap reads frames from a FIFO that a writer
thread fills at a steady rate (TCP SYNs to the VIP from granted, revoked and
never-granted sources) and writes what it forwards to one pcap per run. jitlb
is killed with SIGKILL at random moments, at least --kills times (some during
its start-up); jitd stays up and re-pushes (reconcile) after each restart.
Between runs, while jitlb is down: a grant is revoked and one issued, and at
chosen runs the issuer key of three grants (signed offline, `jitctl push`) is
removed from jitlb's key file, or sequences in the grant table are made odd.
Each run's output is checked against the sources that had no grant at its
start: none may be forwarded, from the first frame on (the window before jitd
reconciles included). DPDK's net_pcap flushes its dumper after every tx
burst, so a killed run's pcap holds what it sent (a torn last record is cut);
each run's pcap is compared with the `forwarded` counter it left in the state
file (`jitctl stats`). Runs after a change are killed late enough for jitd's
re-push, and must forward every source with a grant. A last run, stopped
cleanly, forwards exactly those sources; jitd's states and jitlb's table
(grants, revoked ids) must agree with what was done.

The odd sequences: a kill -9 of jitlb in the middle of a grant-table write
(a few stores, a few nanoseconds, on a table written only when a command
arrives) is practically never hit by a random kill, and this test does not
pretend to: while jitlb is down it makes the sequences odd in the state file
itself (a granted source's hot slot, its detail record and the table's
relocation sequence), as such a crash leaves them, and checks that the next
jitlb made them even and still forwards that source with no grant_busy drop.
The repair itself is unit-tested in tests/unit/test_grant_table.cc ("grant
table: reopen repairs what a crash left: odd sequences and a half-done move").

jitlb's grant table is read here straight from its state file, with a model
of the layout in common/grant_table.cc and common/shared_layout.h (the state
header's section table, the table header's offsets, 64-byte hot slots and
128-byte detail records, 32-byte revoked-set slots).

Names: instance and EAL --file-prefix are "faults<pid>", so nothing is shared
with other tests or with benchmarks (theirs start with "bench").

About 30 s in a release build, 100 s under ASan (the kills are paced by calls
and by jitlb's start, so a slower build keeps their number, not their rate).

Usage: test_faults.py JITD JITCTL JITLB [--kills N] [--pps N] [--seed N] [--keep]
  (as root; exit 77 = skipped: not root, or jitlb cannot start a DPDK EAL.
  jitlb uses hugepages (--in-memory) when 256 MiB are free, else --no-huge.)
  JITLB_FAULTS_KILLS and JITLB_FAULTS_PPS set the defaults of --kills (at least
  20 whatever is asked) and --pps (frames per second into jitlb, default 3000).
"""
import argparse
import grp
import json
import mmap
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

SKIP = 77
MIN_KILLS = 20
FAILURES = []


class Skipped(Exception):
    """The test cannot run here; the message says why."""


def check(cond, what, detail=""):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
        if detail:
            print(detail, flush=True)
    return cond


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jitd")
    ap.add_argument("jitctl")
    ap.add_argument("jitlb")
    ap.add_argument("--kills", type=int, default=int(os.environ.get("JITLB_FAULTS_KILLS", MIN_KILLS)),
                    help=f"kills of each daemon (at least {MIN_KILLS})")
    ap.add_argument("--pps", type=int, default=int(os.environ.get("JITLB_FAULTS_PPS", 3000)),
                    help="frames per second into jitlb in phase 2")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the time)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    args.kills = max(args.kills, MIN_KILLS)
    args.pps = max(args.pps, 100)
    if args.seed is None:
        args.seed = int(time.time() * 1000) % 1_000_000
    return args


# --- frames and pcap files ---------------------------------------------------------------------

NODE_MAC = bytes.fromhex("020000000001")
CLIENT_MAC = bytes.fromhex("020000000002")
VIP = "203.0.113.10"
VIP_PORT = 80
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # DLT_EN10MB


def ip4(text):
    return bytes(int(x) for x in text.split("."))


def inet_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(source, sport, seq):
    """Ethernet / IPv4 (DF) / TCP SYN from source:sport to the VIP, checksums right."""
    src, dst = ip4(source), ip4(VIP)
    tcp = struct.pack("!HHIIBBHHH", sport, VIP_PORT, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", inet_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), seq & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
    return NODE_MAC + CLIENT_MAC + b"\x08\x00" + ip + tcp


def pcap_record(frame, n):
    return struct.pack("<IIII", n // 1_000_000, n % 1_000_000, len(frame), len(frame)) + frame


def read_pcap(path):
    """The frames of a pcap file; a last record cut by a kill -9 is left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        if off + 16 + incl > len(data):
            break
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def forwarded_sources(frames):
    """Client sources of the frames jitlb forwarded (IPv4 in IPv4 to a backend), and
    of the resets it made towards backends, as two Counters."""
    fwd, resets = Counter(), Counter()
    for f in frames:
        if len(f) < 14 + 20 + 20 or f[12:14] != b"\x08\x00" or f[14 + 9] != 4:
            continue
        inner = 14 + (f[14] & 0xF) * 4
        src = ".".join(str(b) for b in f[inner + 12:inner + 16])
        tcp = inner + (f[inner] & 0xF) * 4
        if f[inner + 9] == 6 and len(f) > tcp + 13 and f[tcp + 13] & 0x04:
            resets[src] += 1
        else:
            fwd[src] += 1
    return fwd, resets


# --- jitlb's grant table, read from its state file ---------------------------------------------

STATE_SECTIONS_AT = 64  # RegionHeader::sections: {offset, bytes} x 12
GRANT_TABLE_SECTION, REVOKED_SET_SECTION = 5, 6  # StateSection::grant_table, ::revoked_set
TABLE_MAGIC = 0x3154474C42544C4A  # "JLTBLGT1"
SLOT_WORDS, DETAIL_WORDS, REVOKED_WORDS = 8, 16, 4


class GrantTableView:
    """jitlb's grant table and revoked set in its state file: which grant ids are
    live (and under which key), which are revoked, and where each record lies."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.buf = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        self.table, _ = struct.unpack_from("<QQ", self.buf, STATE_SECTIONS_AT + 16 * GRANT_TABLE_SECTION)
        self.revoked, _ = struct.unpack_from("<QQ", self.buf, STATE_SECTIONS_AT + 16 * REVOKED_SET_SECTION)
        magic, = struct.unpack_from("<Q", self.buf, self.table)
        if magic != TABLE_MAGIC:
            raise RuntimeError(f"{path}: no grant table at offset {self.table} (magic {magic:#x})")
        # TableHeader: slot_count at 40, detail_count 48, hot_offset 80, details_offset 88; relocation_seq 128.
        self.slot_count, self.detail_count = struct.unpack_from("<QQ", self.buf, self.table + 40)
        self.hot, self.details = struct.unpack_from("<QQ", self.buf, self.table + 80)
        self.relocation_at = self.table + 128
        self.revoked_slots, = struct.unpack_from("<Q", self.buf, self.revoked + 40)

    def close(self):
        self.buf.close()

    def slot_at(self, slot):
        return self.table + self.hot + slot * SLOT_WORDS * 8

    def detail_at(self, entry):
        return self.table + self.details + entry * DETAIL_WORDS * 8

    def read(self):
        """{grant id: (slot, entry, service id, "a.b.c.d/len")}, {revoked ids}, [odd sequences]."""
        live, revoked, odd = {}, set(), []
        b = self.buf
        if struct.unpack_from("<Q", b, self.relocation_at)[0] & 1:
            odd.append("relocation")
        for slot in range(self.slot_count):
            w = struct.unpack_from("<8Q", b, self.slot_at(slot))
            if w[0] & 1:
                odd.append(f"slot {slot}")
            meta = w[2]  # service | family << 16 | prefix length << 24 | entry << 32
            if meta == 0:
                continue
            entry = meta >> 32
            d = struct.unpack_from("<4Q", b, self.detail_at(entry))
            if d[0] & 1:
                odd.append(f"detail {entry}")
            gid = (d[2].to_bytes(8, "little") + d[3].to_bytes(8, "little")).hex()
            plen = (meta >> 24) & 0xFF
            addr = ".".join(str(x) for x in w[3].to_bytes(8, "little")[:4])
            live[gid] = (slot, entry, meta & 0xFFFF, f"{addr}/{plen}")
        for i in range(self.revoked_slots):
            w = struct.unpack_from("<4Q", b, self.revoked + 4096 + i * REVOKED_WORDS * 8)
            if w[3] != 0:
                revoked.add((w[1].to_bytes(8, "little") + w[2].to_bytes(8, "little")).hex())
        return live, revoked, odd

    def stable_read(self, tries=20):
        """read() twice with the same answer (jitlb may be writing in between)."""
        last = self.read()
        for _ in range(tries):
            time.sleep(0.01)
            now = self.read()
            if now == last:
                return now
            last = now
        return last


def make_odd(path, grant_id):
    """While jitlb is down: leave the sequences of grant_id's hot slot and detail
    record, and the table's relocation sequence, odd, as a crash mid-write would."""
    view = GrantTableView(path)
    live, _, _ = view.read()
    slot, entry, _, _ = live[grant_id]
    at = [view.slot_at(slot), view.detail_at(entry), view.relocation_at]
    view.close()
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        for a in at:
            seq, = struct.unpack_from("<Q", m, a)
            struct.pack_into("<Q", m, a, seq | 1)
        m.flush()
        m.close()
    return slot, entry


# --- the daemons -------------------------------------------------------------------------------


class Node:
    """jitd (as user jitd when it exists) and jitlb (as root) in one work directory."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.instance = f"faults{os.getpid()}"
        self.sock = f"{work}/jitd.sock"
        self.state_file = f"{work}/jitlb-{self.instance}.state"
        self.jitd = None
        self.jitlb = None
        self.jitlb_runs = 0
        self.jitd_starts = 0
        try:
            self.jitd_user = pwd.getpwnam("jitd")
        except KeyError:
            self.jitd_user = None
            print("note: no user jitd (run scripts/setup): jitd runs as root in this test")
        self.eal_memory = eal_memory()

    # jitctl
    def ctl(self, *args, user=None, stdin=None, timeout=30):
        cmd = [self.args.jitctl, "--socket", self.sock, *args]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={'nogroup' if user == 'nobody' else user}",
                   "--init-groups", *cmd]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, "", "timeout"
        return r.returncode, r.stdout, r.stderr

    def ctl_json(self, *args, user=None, stdin=None):
        rc, out, err = self.ctl("--json", *args, user=user, stdin=stdin)
        try:
            return rc, (json.loads(out) if out.strip() else {}), err
        except json.JSONDecodeError:
            return rc, {"unparsed": out}, err

    def grants(self):
        """jitd's grants, id -> row (None when jitd does not answer)."""
        rc, j, _ = self.ctl_json("ls", "grants", "--all")
        if rc != 0:
            return None
        return {g["id"]: g for g in j.get("grants", [])}

    def counters(self):
        """jitlb's counters and drops from its state file (`jitctl stats`); they stay
        there after a kill -9 until the next jitlb zeroes them."""
        rc, j, err = self.ctl_json("stats", "--state-file", self.state_file, "--owner", "root")
        return {**j.get("counters", {}), **j.get("drops", {})} if rc == 0 else None

    # jitd
    def spawn_jitd(self):
        log = open(f"{self.work}/jitd.log", "a")
        self.jitd_starts += 1
        log.write(f"--- start {self.jitd_starts}\n")
        log.flush()
        cmd = [self.args.jitd, "-c", f"{self.work}/jitd.toml"]
        if self.jitd_user:
            cmd = ["setpriv", "--reuid=jitd", "--regid=jitd", "--init-groups", *cmd]
        self.jitd = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.jitd

    def start_jitd(self):
        p = self.spawn_jitd()
        deadline = time.time() + 20
        while time.time() < deadline:
            if p.poll() is not None:
                break
            if os.path.exists(self.sock) and self.ctl("status", timeout=5)[0] == 0:
                return p
            time.sleep(0.01)
        raise RuntimeError("jitd did not start:\n" + tail(f"{self.work}/jitd.log"))

    def kill_jitd(self):
        self.jitd.send_signal(signal.SIGKILL)
        self.jitd.wait()

    # jitlb
    def write_jitlb_config(self, name, device):
        path = f"{self.work}/jitlb-{name}.toml"
        Path(path).write_text(f"""# written by test_faults.py
instance = "{self.instance}"
addresses = ["192.0.2.10"]
[[port]]
name = "wan"
device = "{device}"
mac = "{':'.join(f'{b:02x}' for b in NODE_MAC)}"
next_hop_mac = "02:00:00:00:00:fe"
[grants]
issuer_keys = "{self.work}/issuers.pub"
mac_key = "{self.work}/jitlb.mackey"
capacity = 4096
[encap]
outer_source_v4 = "10.255.0.0/16"
[region]
dir = "{self.work}"
cmd_dir = "{self.work}"
cmd_owner = "{'jitd' if self.jitd_user else 'root'}"
""")
        os.chmod(path, 0o644)
        return path

    def spawn_jitlb(self, config, extra=()):
        self.jitlb_runs += 1
        self.jitlb_log = f"{self.work}/jitlb-run{self.jitlb_runs}.log"
        log = open(self.jitlb_log, "w")
        cmd = [self.args.jitlb, "-l", "0,1", "--no-pci", *self.eal_memory, f"--file-prefix={self.instance}",
               "--log-level=lib.eal:error", "--", "--config", config, *extra]
        self.jitlb = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.jitlb

    def wait_jitlb_running(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "jitlb: running" in Path(self.jitlb_log).read_text(errors="replace"):
                if self.jitd_user:
                    # jitlb runs as root here, not as user jitlb: give its state file
                    # the group jitd reads it through, as a jitlb user's would have.
                    os.chown(self.state_file, -1, grp.getgrnam("jitlb").gr_gid)
                return True
            if self.jitlb.poll() is not None:
                return False
            time.sleep(0.005)
        return False

    def kill_jitlb(self):
        if self.jitlb and self.jitlb.poll() is None:
            self.jitlb.send_signal(signal.SIGKILL)
            self.jitlb.wait()

    def stop_all(self):
        for p in (self.jitd, self.jitlb):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def eal_memory():
    """Hugepages without hugetlbfs files (--in-memory) when enough are free, else plain memory."""
    free = size_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("HugePages_Free:"):
            free = int(line.split()[1])
        elif line.startswith("Hugepagesize:"):
            size_kb = int(line.split()[1])
    if free * size_kb >= 256 * 1024:
        return ["--in-memory"]
    return ["--no-huge", "-m", "512"]  # DPDK refuses --in-memory with --no-huge


def tail(path, n=3000):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return f"({path}: none)"


def wait_for(pred, seconds):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# --- setup -------------------------------------------------------------------------------------


def set_up(node):
    w = node.work
    for name in ("issuer", "audit", "offline"):
        rc, out, err = node.ctl("keygen", "--out", f"{w}/{name}.key", "--comment", f"faults {name}")
        if rc != 0:
            raise RuntimeError(f"jitctl keygen: {out}{err}")
    # jitlb trusts jitd's issuer and an offline one, whose grants reach jitd by `jitctl push`.
    issuer_line = Path(f"{w}/issuer.key.pub").read_text()
    offline_line = Path(f"{w}/offline.key.pub").read_text()
    Path(f"{w}/issuers.pub").write_text(issuer_line + offline_line)
    os.chmod(f"{w}/issuers.pub", 0o644)
    if node.jitd_user:
        for path in (w, f"{w}/issuer.key", f"{w}/audit.key"):
            os.chown(path, node.jitd_user.pw_uid, node.jitd_user.pw_gid)
    Path(f"{w}/policy.toml").write_text("""
[[rule]]
name = "faults-auto"
services = ["web"]
users = ["nobody"]
sources = ["100.64.0.0/10"]
max_duration = "30m"
approval = "auto"
""")
    os.chmod(f"{w}/policy.toml", 0o644)
    Path(f"{w}/jitd.toml").write_text(f"""
instance = "{node.instance}"
state_dir = "{w}/state"
socket = "{node.sock}"
socket_mode = "0666"
issuer_key = "{w}/issuer.key"
audit_key = "{w}/audit.key"
audit_checkpoint_lines = 50
cmd_file = "{w}/jitlb-{node.instance}.cmd"
state_file = "{node.state_file}"
jitlb_user = "root"
request_rate = 1000
request_burst = 1000
policy_file = "{w}/policy.toml"
[[service]]
name = "web"
mode = "ipip"
vips = [{{address = "{VIP}", port = {VIP_PORT}, protocol = "tcp"}}]
backends = [{{id = "w1", address = "10.0.0.1"}}, {{id = "w2", address = "10.0.0.2"}}]
""")


# --- phase 1: kill -9 of jitd ------------------------------------------------------------------


class GrantClient(threading.Thread):
    """Issues grants and revokes some, one jitctl call at a time, recording what
    jitd acknowledged. `gate` is held for each call: whoever takes it has the
    client paused between two calls."""

    def __init__(self, node, rng):
        super().__init__(daemon=True)
        self.node, self.rng = node, rng
        self.gate = threading.Lock()
        self.stop = threading.Event()
        self.acked = {}       # grant id -> source: jitctl said it was issued
        self.revoked = set()  # acknowledged revocations
        self.unsure = set()   # revocations that got no answer (jitd killed during the call)
        self.calls = Counter()
        self.refusals = []
        self.deaths = []  # jitctl itself killed (exit codes are 0..4)
        self.done = 0     # calls made
        self.n = 0

    def source(self):
        self.n += 1
        return f"100.64.{self.n // 200}.{self.n % 200 + 1}"

    def live(self):
        return [g for g in self.acked if g not in self.revoked and g not in self.unsure]

    def run(self):
        while not self.stop.is_set():
            with self.gate:
                self.one_call()
                self.done += 1
            time.sleep(self.rng.uniform(0.0, 0.015))

    def one_call(self):
        live = self.live()
        if live and (len(live) > 40 or self.rng.random() < 0.3):
            gid = self.rng.choice(live)
            rc, j, err = self.node.ctl_json("revoke", gid, "--reason", "fault test")
            self.calls[f"revoke rc {rc}"] += 1
            if rc < 0:
                self.deaths.append(f"revoke {gid}: jitctl killed by signal {-rc}")
            if rc == 0:
                self.revoked.add(gid)
            elif rc == 1:
                self.refusals.append(f"revoke {gid}: {j.get('error', err)}")
            else:  # no answer: jitd may or may not have revoked it
                self.unsure.add(gid)
            return
        src = self.source()
        if self.rng.random() < 0.25:
            rc, j, err = self.node.ctl_json("request", "web", "--source", src, "--for", "20m", user="nobody")
            kind = "request"
        else:
            rc, j, err = self.node.ctl_json("grant", "web", "--source", src, "--for", "20m", "--subject", "faults")
            kind = "grant"
        self.calls[f"{kind} rc {rc}"] += 1
        if rc < 0:
            self.deaths.append(f"{kind} {src}: jitctl killed by signal {-rc}")
        if rc == 0 and j.get("grant", {}).get("id"):
            self.acked[j["grant"]["id"]] = src
        elif rc == 1:
            self.refusals.append(f"{kind} {src}: {j.get('error', err)}")


TRANSIENT = ("ready", "pushed", "waiting")


def snapshot(node, table):
    """jitd's grants and jitlb's table (None for the grants when jitd does not answer)."""
    grants = node.grants()
    live, revoked, odd = table.stable_read()
    return grants, live, revoked, odd


def converged(snap):
    """Nothing on its way to jitlb, and jitd's active grants are exactly jitlb's table."""
    grants, live, _, _ = snap
    if grants is None or any(g["state"] in TRANSIENT for g in grants.values()):
        return False
    return {gid for gid, g in grants.items() if g["state"] == "active"} == set(live)


def check_phase1_state(node, client, table, label):
    """After a restart: the acknowledged grants and revocations, in jitd and jitlb."""
    deadline = time.time() + 10
    snap = snapshot(node, table)
    while not converged(snap) and time.time() < deadline:
        time.sleep(0.05)
        snap = snapshot(node, table)
    grants, live, revoked, odd = snap
    grants = grants or {}
    problems = []
    if not converged(snap):
        active = {gid for gid, g in grants.items() if g["state"] == "active"}
        problems.append(f"    jitd and jitlb do not agree after 10 s: jitd's states "
                        f"{dict(Counter(g['state'] for g in grants.values()))}; active in jitd, not in "
                        f"jitlb: {sorted(active - set(live))[:4]}; in jitlb, not active in jitd: "
                        f"{sorted(set(live) - active)[:4]}")
    for gid, src in client.acked.items():
        g = grants.get(gid)
        if g is None:
            problems.append(f"    acknowledged grant {gid} ({src}) is unknown to jitd")
        elif gid in client.revoked:
            if g["state"] != "revoked":
                problems.append(f"    revoked grant {gid} ({src}) is {g['state']} in jitd")
            if gid in live:
                problems.append(f"    revoked grant {gid} ({src}) is in jitlb's table")
            if gid not in revoked:
                problems.append(f"    revoked grant {gid} ({src}) is not in jitlb's revoked set")
        elif gid not in client.unsure:
            if g["state"] != "active":
                problems.append(f"    grant {gid} ({src}) is {g['state']} in jitd ({g['state_reason']})")
            if gid not in live:
                problems.append(f"    grant {gid} ({src}) is not in jitlb's table")
            elif live[gid][3] != f"{src}/32":
                problems.append(f"    grant {gid} is in jitlb's table for {live[gid][3]}, not {src}/32")
    if odd:
        problems.append(f"    odd sequences in jitlb's table: {odd[:5]}")
    return check(not problems, f"{label}: {len(client.acked)} acknowledged grants known to jitd, "
                 f"{len(client.live())} active in jitd and jitlb, {len(client.revoked)} revoked in both "
                 f"({len(client.unsure)} revocations unanswered)", "\n".join(problems[:12]))


def phase_jitd(node, rng):
    print(f"\n--- phase 1: kill -9 of jitd, {node.args.kills} times, under a stream of grants", flush=True)
    config = node.write_jitlb_config("null", "net_null0,no-rx=1")
    node.spawn_jitlb(config)
    if not node.wait_jitlb_running():
        log = tail(node.jitlb_log)
        if "EAL init failed" in log:
            raise Skipped(f"jitlb cannot start a DPDK EAL here:\n{log}")
        raise RuntimeError(f"jitlb did not start:\n{log}")
    node.start_jitd()
    check(wait_for(lambda: node.ctl_json("status")[1].get("jitlb", {}).get("attached"), 10),
          "jitlb attaches to jitd's command ring")
    table = GrantTableView(node.state_file)
    client = GrantClient(node, random.Random(rng.random()))
    client.start()
    kills, rounds, started = 0, 0, time.monotonic()
    while kills < node.args.kills:
        rounds += 1
        # A few calls answered (or not) since the restart, then a random moment:
        # inside a call, between two, in a tick. Counted in calls, not seconds, so
        # that a slower (sanitizer) build keeps the stream going across the kills.
        target = client.done + rng.randint(1, 5)
        wait_for(lambda: client.done >= target, 60)
        time.sleep(rng.uniform(0.0, 0.15))
        node.kill_jitd()
        kills += 1
        how = "running"
        if rounds % 4 == 0:
            # The next jitd is killed while it starts: recovering its audit log,
            # opening its database, reconciling with jitlb.
            node.spawn_jitd()
            time.sleep(rng.uniform(0.0, 0.08))
            node.kill_jitd()
            kills += 1
            how = "running, then starting"
        node.start_jitd()
        with client.gate:
            check_phase1_state(node, client, table, f"jitd kill {kills} ({how})")
    client.stop.set()
    client.join()
    took = time.monotonic() - started
    print(f"    {kills} kills in {took:.1f} s; calls: {dict(sorted(client.calls.items()))}")
    check(not client.refusals, "jitd refused no call", "\n".join(f"    {r}" for r in client.refusals[:10]))
    check(not client.deaths, "every jitctl call ended with an exit code (none killed by a signal)",
          "\n".join(f"    {r}" for r in client.deaths[:10]))
    check_jitctl_when_jitd_dies(node)
    check(len(client.acked) >= kills and len(client.revoked) >= kills // 4,
          f"the stream kept going across the kills: {len(client.acked)} grants and "
          f"{len(client.revoked)} revocations acknowledged")
    torn = Path(f"{node.work}/jitd.log").read_text(errors="replace").count("cut a torn last line")
    print(f"    jitd cut a torn last audit line at {torn} of {node.jitd_starts} starts")
    check_audit(node, "after the jitd kills")

    # Phase 2 starts from a quiet table: phase 1's live grants are revoked.
    for gid in client.live():
        node.ctl("revoke", gid, "--reason", "end of phase 1")
    node.jitlb.send_signal(signal.SIGINT)
    node.jitlb.wait(timeout=20)
    table.close()


def check_jitctl_when_jitd_dies(node):
    """jitd gone in the middle of a call, made certain: a socket that takes the
    connection and closes it while jitctl still writes its request. jitctl must
    say so with exit 3, not die of SIGPIPE (the random kills above hit this
    about once in 200 calls)."""
    path = f"{node.work}/gone.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def take_and_close():
        conn, _ = server.accept()
        conn.recv(1)
        conn.close()

    t = threading.Thread(target=take_and_close, daemon=True)
    t.start()
    r = subprocess.run([node.args.jitctl, "--socket", path, "push", "-"], input="x" * (4 << 20),
                       capture_output=True, text=True, timeout=30)
    t.join()
    server.close()
    check(r.returncode == 3, f"jitctl exits 3 when jitd closes the connection during the call (exit {r.returncode}"
          + (f", killed by signal {-r.returncode})" if r.returncode < 0 else ")"), f"    {r.stderr.strip()}")


def check_audit(node, label):
    rc, out, err = node.ctl("audit", "verify")
    check(rc == 0, f"{label}: jitctl audit verify (through jitd)", f"    {out}{err}")
    rc, j, _ = node.ctl_json("status")
    head = f"{j['audit']['seq']}:{j['audit']['hash']}" if rc == 0 else "0:0"
    rc, out, err = node.ctl("audit", "verify", "--file", f"{node.work}/state/audit.log", "--keys",
                            f"{node.work}/audit.key.pub", "--head", head)
    check(rc == 0, f"{label}: jitctl audit verify --file --keys --head {head.split(':')[0]} (offline)",
          f"    {out}{err}")


# --- phase 2: kill -9 of jitlb under load -----------------------------------------------------


class Source:
    """A client address the writer sends from, and when it may be forwarded."""

    def __init__(self, address, kind):
        self.address, self.kind = address, kind
        self.grant_id = None
        self.allowed_from = None    # first run started after its grant was issued
        self.forbidden_from = None  # first run started after its grant ended
        self.changed_in = None      # the run during which it ended (not checked there)

    def forbidden_in(self, run):
        if run == self.changed_in:
            return False
        if self.forbidden_from is not None and run >= self.forbidden_from:
            return True
        return self.allowed_from is None or run < self.allowed_from


class FrameWriter(threading.Thread):
    """Writes SYNs from every source into the FIFO jitlb's pcap port reads, in
    batches every 10 ms, until stopped or jitlb goes away (EPIPE)."""

    def __init__(self, fifo, proc, sources, pps):
        super().__init__(daemon=True)
        self.fifo, self.proc, self.sources, self.pps = fifo, proc, sources, pps
        self.stop = threading.Event()
        self.sent = Counter()

    def run(self):
        fd = None
        deadline = time.monotonic() + 30
        while fd is None and time.monotonic() < deadline and not self.stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: jitlb has not opened it yet
                if self.proc.poll() is not None:
                    return
                time.sleep(0.002)
        if fd is None:
            return
        os.set_blocking(fd, True)
        n, sport = 0, 1024
        per_batch = max(1, self.pps // 100)
        try:
            os.write(fd, PCAP_HEADER)
            next_at = time.monotonic()
            while not self.stop.is_set():
                batch = []
                for _ in range(per_batch):
                    s = self.sources[n % len(self.sources)]
                    sport = sport + 1 if sport < 65000 else 1024
                    batch.append(pcap_record(syn_frame(s.address, sport, n), n))
                    self.sent[s.address] += 1
                    n += 1
                os.write(fd, b"".join(batch))
                next_at += 0.01
                time.sleep(max(0.0, next_at - time.monotonic()))
        except (BrokenPipeError, OSError):
            pass
        finally:
            os.close(fd)


class Phase2:
    def __init__(self, node, rng):
        self.node, self.rng = node, rng
        self.w = node.work
        self.fifo = f"{self.w}/frames.fifo"
        os.mkfifo(self.fifo)
        self.sources = []
        self.run = 0

    def add(self, address, kind):
        s = Source(address, kind)
        self.sources.append(s)
        return s

    def grant(self, s):
        rc, j, err = self.node.ctl_json("grant", "web", "--source", s.address, "--for", "20m", "--subject", s.kind)
        if rc != 0:
            raise RuntimeError(f"jitctl grant {s.address}: {j} {err}")
        s.grant_id = j["grant"]["id"]
        s.allowed_from = self.run + 1

    def push_offline(self, s):
        rc, text, err = self.node.ctl("sign", "--key", f"{self.w}/offline.key", "--service", "web",
                                      "--source", s.address, "--for", "20m", "--subject", "offline")
        rc2, j, err2 = self.node.ctl_json("push", "-", stdin=text)
        if rc != 0 or rc2 != 0:
            raise RuntimeError(f"sign and push {s.address}: {err}{err2}{j}")
        s.grant_id = j["grant"]["id"]
        s.allowed_from = self.run + 1

    def revoke(self, s, during_run=False):
        rc, j, err = self.node.ctl_json("revoke", s.grant_id, "--reason", "fault test")
        if not check(rc == 0, f"revoke {s.address} ({'while jitlb runs' if during_run else 'while jitlb is down'})",
                     f"    {j} {err}"):
            return
        if during_run:
            s.changed_in = self.run
        s.forbidden_from = self.run + 1

    def config(self):
        return self.node.write_jitlb_config(
            f"pcap{self.run}", f"net_pcap0,rx_pcap={self.fifo},tx_pcap={self.w}/out-{self.run}.pcap")

    def one_run(self, kill_mode, delay, revoke_at=None, extra=()):
        """Starts jitlb with frames flowing; kills it (kill_mode "startup" or
        "running") or, with kill_mode None, stops it cleanly after `delay`.
        Returns (frames written, forwarded and resets by source, its counters or
        None, seconds until it said "running" or None)."""
        self.run += 1
        node = self.node
        sources = list(self.sources)
        proc = node.spawn_jitlb(self.config(), extra)
        writer = FrameWriter(self.fifo, proc, sources, node.args.pps)
        writer.start()
        t0 = time.monotonic()
        running = None
        if kill_mode == "startup":
            time.sleep(delay)
        else:
            if not node.wait_jitlb_running():
                writer.stop.set()
                raise RuntimeError(f"jitlb run {self.run} did not start:\n{tail(node.jitlb_log)}")
            running = time.monotonic() - t0
            victim = self.pick_pool_live() if revoke_at is not None else None
            if victim:
                time.sleep(revoke_at)
                self.revoke(victim, during_run=True)
                time.sleep(max(0.0, delay - revoke_at))
            else:
                time.sleep(delay)
        counters = None
        if kill_mode is None:
            writer.stop.set()
            writer.join()
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            try:
                counters = json.loads(Path(f"{self.w}/stats-{self.run}.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                counters = None
        else:
            node.kill_jitlb()
            writer.stop.set()
            writer.join()
            # The counter blocks stay in the state file until the next jitlb zeroes them.
            counters = node.counters() if running is not None else None
        fwd, resets = forwarded_sources(read_pcap(f"{self.w}/out-{self.run}.pcap"))
        return sum(writer.sent.values()), fwd, resets, counters, running

    def pick_pool_live(self):
        live = [s for s in self.sources if s.kind == "pool" and s.forbidden_from is None and s.allowed_from
                and s.allowed_from <= self.run]
        return self.rng.choice(live) if live else None

    def check_run(self, label, sent, fwd, resets, must_forward=()):
        forbidden = {s.address for s in self.sources if s.forbidden_in(self.run)}
        bad = {a: n for a, n in fwd.items() if a in forbidden}
        bad_resets = {a: n for a, n in resets.items() if a in forbidden}
        missing = [a for a in must_forward if fwd.get(a, 0) == 0]
        detail = []
        if bad:
            detail.append(f"    forwarded from sources without a grant at the run's start: {bad}")
        if bad_resets:
            detail.append(f"    resets made for sources without a grant at the run's start: {bad_resets}")
        if missing:
            detail.append(f"    nothing forwarded from {missing}")
        return check(not detail, f"{label}: {sent} frames written, {sum(fwd.values())} forwarded from "
                     f"{len(fwd)} sources, {sum(bad.values())} from the {len(forbidden)} without a grant"
                     + (f"; {', '.join(must_forward)} forwarded" if must_forward else ""), "\n".join(detail))


def phase_jitlb(node, rng):
    print(f"\n--- phase 2: kill -9 of jitlb, {node.args.kills} times, frames flowing "
          f"({node.args.pps} per second)", flush=True)
    p = Phase2(node, rng)
    always = [p.add(f"198.51.100.{i}", "always") for i in range(1, 5)]
    offline = [p.add(f"198.51.100.{i}", "offline") for i in range(11, 14)]
    for i in range(21, 25):
        p.add(f"198.51.100.{i}", "never")
    pool = [p.add(f"198.51.100.{100 + i}", "pool") for i in range(6)]
    for s in always + pool:
        p.grant(s)
    for s in offline:
        p.push_offline(s)
    seq_source = always[0]
    kills = node.args.kills
    remove_key_at = kills // 2          # the run after which the offline key is removed
    odd_at = {3, kills // 2 + 2, kills - 2}  # runs after which sequences are made odd
    odd_check = None
    started = time.monotonic()

    for k in range(1, kills + 1):
        # The kill: mostly while it forwards; every fifth during its start-up.
        slow = (k - 1) in odd_at or k - 1 == remove_key_at or k == 1
        if k % 5 == 0 and not slow:
            mode, delay = "startup", rng.uniform(0.0, 0.4)
        else:
            mode, delay = "running", rng.uniform(1.0, 1.5) if slow else rng.uniform(0.05, 1.0)
        revoke_at = rng.uniform(0.0, delay) if mode == "running" and not slow and rng.random() < 0.5 else None
        sent, fwd, resets, counters, running = p.one_run(mode, delay, revoke_at)
        when = f"{delay:.2f} s after " + ("spawn" if mode == "startup" else f"running (start took {running:.2f} s)")
        must = []
        if slow:  # long enough for jitd's re-push of the services: every source with a grant
            must = sorted(s.address for s in p.sources if not s.forbidden_in(p.run))
        p.check_run(f"jitlb run {p.run}, killed {when}", sent, fwd, resets, must)
        if counters is not None:
            # The pcap is the whole story only if it holds what jitlb counted as
            # forwarded, but for the burst a kill may cut.
            lost = counters.get("forwarded", 0) - sum(fwd.values())
            check(0 <= lost <= 32, f"jitlb run {p.run}: its pcap holds {sum(fwd.values())} of the "
                  f"{counters.get('forwarded')} frames its counters say it forwarded")
        if odd_check:
            slot, entry = odd_check
            busy = (counters or {}).get("grant_busy")
            view = GrantTableView(node.state_file)
            live, _, odd = view.read()
            view.close()
            check(not odd and seq_source.grant_id in live and fwd.get(seq_source.address, 0) > 0 and busy == 0,
                  f"jitlb run {p.run}: the odd sequences (slot {slot}, detail {entry}, relocation) were "
                  f"made even, and {seq_source.address} was forwarded ({fwd.get(seq_source.address, 0)} frames, "
                  f"grant_busy {busy})", f"    odd now: {odd}; in table: {seq_source.grant_id in live}")
            odd_check = None

        # jitlb is down: change what it must enforce when it comes back.
        victim = p.pick_pool_live()
        if victim:
            p.revoke(victim)
        fresh = p.add(f"198.51.100.{100 + len(pool)}", "pool")
        pool.append(fresh)
        p.grant(fresh)
        if k == remove_key_at:
            Path(f"{p.w}/issuers.pub").write_text(Path(f"{p.w}/issuer.key.pub").read_text())
            for s in offline:
                s.forbidden_from = p.run + 1
            print(f"    the offline issuer key is removed from jitlb's key file before run {p.run + 1}")
        if k in odd_at:
            odd_check = make_odd(node.state_file, seq_source.grant_id)
            print(f"    sequences made odd before run {p.run + 1}: slot {odd_check[0]}, detail "
                  f"{odd_check[1]}, relocation")

    # A last run, stopped cleanly: every source with a grant is forwarded, no other.
    sent, fwd, resets, counters, _ = p.one_run(None, 2.0, extra=("--stats-json", f"{p.w}/stats-{p.run + 1}.json"))
    allowed = sorted(s.address for s in p.sources if not s.forbidden_in(p.run))
    p.check_run(f"jitlb run {p.run}, stopped cleanly after 2 s", sent, fwd, resets, allowed)
    check(set(fwd) == set(allowed), f"the last run forwarded exactly the {len(allowed)} sources with a grant",
          f"    forwarded {sorted(fwd)}\n    allowed   {allowed}")
    if counters is not None:
        check(counters.get("forwarded") == sum(fwd.values()) and counters.get("grant_busy", 0) == 0,
              f"the last run's counters: forwarded {counters.get('forwarded')} = {sum(fwd.values())} frames "
              f"in its pcap, grant_busy {counters.get('grant_busy')}")
    else:
        check(False, "the last run wrote its --stats-json", tail(node.jitlb_log))
    took = time.monotonic() - started
    print(f"    {kills} jitlb kills and {p.run} runs in {took:.1f} s")

    # jitd's view after all that: the same grants live, revoked, gone.
    grants = node.grants() or {}
    wrong = []
    for s in p.sources:
        if s.grant_id is None:
            continue
        state = grants.get(s.grant_id, {}).get("state")
        if s.kind == "offline":
            ok = state in ("rejected", "revoked")
        elif s.forbidden_from is not None:
            ok = state == "revoked"
        else:
            ok = state == "active"
        if not ok:
            wrong.append(f"    {s.kind} {s.address}: {state} ({grants.get(s.grant_id, {}).get('state_reason')})")
    check(not wrong, "jitd: grants with a grant active, revoked ones revoked, the removed key's ended",
          "\n".join(wrong))
    view = GrantTableView(node.state_file)
    live, revoked, odd = view.read()
    view.close()
    wrong = []
    for s in p.sources:
        if s.grant_id is None:
            continue
        if s.kind == "offline" and s.grant_id in live:
            wrong.append(f"    {s.address}: its issuer key is gone, its grant is still in the table")
        elif s.kind != "offline" and s.forbidden_from is not None and (s.grant_id in live or s.grant_id not in revoked):
            wrong.append(f"    {s.address}: revoked; in the table {s.grant_id in live}, in the revoked set "
                         f"{s.grant_id in revoked}")
        elif s.forbidden_from is None and s.grant_id not in live:
            wrong.append(f"    {s.address}: granted, not in the table")
    check(not wrong and not odd, f"jitlb's table after the last run: {len(live)} grants, {len(revoked)} revoked ids, "
          f"as jitd has them", "\n".join(wrong + [f"    odd: {odd}"] * bool(odd)))
    check_audit(node, "after the jitlb kills")


def main():
    args = parse_args()
    if os.geteuid() != 0:
        print("SKIP: needs root (DPDK EAL, setpriv to the users jitd and nobody)")
        return SKIP
    for exe in (args.jitd, args.jitctl, args.jitlb):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not an executable")
            return 1
    rng = random.Random(args.seed)
    print(f"seed {args.seed} (--seed {args.seed} repeats the random choices; the timing is the machine's)")
    work = tempfile.mkdtemp(prefix=f"faults{os.getpid()}.")
    os.chmod(work, 0o755)
    print(f"work dir: {work}")
    node = Node(args, work)
    print(f"EAL memory: {' '.join(node.eal_memory)}")
    started = time.monotonic()
    skipped = False
    try:
        set_up(node)
        phase_jitd(node, rng)
        phase_jitlb(node, rng)
    except Skipped as e:
        print(f"SKIP: {e}")
        skipped = True
    except RuntimeError as e:
        check(False, f"the test ran to its end: {e}")
    finally:
        node.stop_all()
        # EAL leaves its runtime directory behind (with --in-memory too).
        shutil.rmtree(f"/var/run/dpdk/{node.instance}", ignore_errors=True)
    if skipped and not FAILURES:
        shutil.rmtree(work, ignore_errors=True)
        return SKIP
    print(f"\n{len(FAILURES)} failed; {time.monotonic() - started:.1f} s")
    if FAILURES or args.keep:
        print(f"files kept in {work}")
        if FAILURES:
            print(f"--- jitd.log (tail)\n{tail(f'{work}/jitd.log')}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
