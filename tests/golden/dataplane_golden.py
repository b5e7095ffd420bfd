#!/usr/bin/python3
"""The data plane's golden pcap tests: jitlb itself, end to end, on crafted frames.

Each case of dataplane_cases.py (a name, input frames built with scapy, and the
exact output frame each must produce, or the counter its drop is counted
under) goes through the real jitlb binary with a net_pcap port. One jitlb run
covers many cases: their frames go into one input pcap in order, and with one
worker every forwarded or answered frame comes out in input order (a reset
towards a backend, which the pipeline makes in a spare buffer, after its rx
burst), so outputs are matched to cases by order. Drops leave no frame; they
are checked through the counters jitlb writes with --stats-json, which must
equal, counter by counter, the sums the table implies. With an exception port
(a second net_pcap device standing in for the kernel's TAP), the frames handed
to the kernel and the kernel's frames relayed out are matched the same way.

The runs share one state file (grants survive a restart; services do not, so
they are pushed again, while jitlb is down, before each restart):
  live         jitlb running while jitlb_stage pushes services, grants and a
               revocation, and their events are read back; then frames
               through a FIFO in three phases: while a short grant is valid,
               after jitlb posted its GrantExpired, and after the Maglev
               service's backends changed under established flows.
  main         most cases; an exception port.
  clock-10min  --clock-shift-ms -600000: a grant that has not started yet.
  clock+2h     --clock-shift-ms 7200000: a grant that ended while jitlb was down.

usage: dataplane_golden.py JITLB JITLB_STAGE [--selfcheck] [--keep DIR] [--verbose]
Exit 0: pass; 1: a case failed; 77: jitlb cannot run here (not root, or no DPDK EAL).
"""
import argparse
import base64
import difflib
import ipaddress
import json
import os
import pwd
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane_cases as dc  # noqa: E402

from scapy.all import ARP, ICMPv6ND_NA, IP, TCP, UDP, Ether, ICMPv6NDOptDstLLAddr, IPv6, IPv6ExtHdrFragment  # noqa: E402

INSTANCE = "golden"  # a runner that reuses this module may set its own (hostile_golden.py does)
SKIP = 77
BURST = 32  # frames per rx burst: net_pcap reads a file 32 at a time, as jitlb asks

# --- pcap files ----------------------------------------------------------------------------------

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # DLT_EN10MB


def pcap_records(frames):
    return b"".join(struct.pack("<IIII", 1, i, len(f), len(f)) + f for i, f in enumerate(frames))


def write_pcap(path, frames):
    Path(path).write_bytes(PCAP_HEADER + pcap_records(frames))


def read_pcap(path):
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    frames, off = [], 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def hexdump_diff(want, got):
    """Both frames, 16 bytes a line, differing bytes marked with *."""
    lines = []
    for off in range(0, max(len(want), len(got)), 16):
        def row(a, b):
            cells = []
            for i in range(off, off + 16):
                if i >= len(a):
                    cells.append("  ")
                    continue
                mark = i >= len(b) or a[i] != b[i]
                cells.append(f"{a[i]:02x}" + ("*" if mark else " "))
            return " ".join(c.ljust(3) for c in cells)
        same = want[off:off + 16] == got[off:off + 16]
        lines.append(f"      {off:04x} want {row(want, got)}")
        if not same:
            lines.append(f"      {'':4} got  {row(got, want)}")
    lines.append(f"      want: {Ether(want).summary()}" if len(want) >= 14 else "      want: (short)")
    lines.append(f"      got:  {Ether(got).summary()}" if len(got) >= 14 else "      got:  (short)")
    return "\n".join(lines)


# --- jitlb_stage ---------------------------------------------------------------------------------


class Stage:
    """tests/tools/jitlb_stage, standing in for jitd."""

    def __init__(self, exe, tmp, verbose):
        self.exe, self.tmp, self.verbose = exe, Path(tmp), verbose
        self.secret, self.public = self.tmp / "issuer.secret", self.tmp / "issuers.pub"
        self.scripts = 0

    def run(self, *args, check=True, timeout=30):
        cmd = [self.exe, *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if self.verbose:
            print(f"  $ {' '.join(cmd)}\n{r.stdout}{r.stderr}", end="")
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def region(self):
        return ["--dir", self.tmp, "--instance", INSTANCE, "--state-owner", str(os.geteuid())]

    def keygen(self):
        return json.loads(self.run("keygen", "--secret", self.secret, "--public", self.public,
                                   "--comment", "dataplane_golden").stdout)

    def sign(self, spec, now_ms):
        text = self.run("sign", "--secret", self.secret, "--source", spec.source, "--service", spec.service,
                        "--subject", f"golden {spec.name}",
                        "--not-before-ms", now_ms + spec.not_before_s * 1000,
                        "--not-after-ms", now_ms + spec.not_after_s * 1000).stdout.strip()
        return text

    def push(self, script):
        self.scripts += 1
        path = self.tmp / f"script{self.scripts}.json"
        path.write_text(json.dumps(script, indent=1))
        out = self.run("push", *self.region(), "--script", path, "--wait-ms", 10000)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def events(self, until=None, wait_ms=None):
        args = ["events", *self.region()]
        if until:
            args += ["--until", until]
        if wait_ms is not None:
            args += ["--wait-ms", wait_ms]
        r = self.run(*args, check=False)
        events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        return events, r


def signed_bytes(text):
    """The 232 bytes of a grant's text form (jitlb-grant1:<base64url>)."""
    b64 = text.split(":", 1)[1]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


def grant_id_of(text):
    return signed_bytes(text)[24:40].hex()


# --- jitlb ------------------------------------------------------------------------------------------


def config_text(tmp, device, exception_device, user):
    s6 = dc.OUTER6
    return f"""# written by dataplane_golden.py
instance = "{INSTANCE}"
addresses = ["{dc.NODE4}", "{dc.NODE6}"]

[[port]]
name = "golden"
device = "{device}"
mac = "{dc.NODE_MAC}"
next_hop_mac = "{dc.NEXT_HOP_MAC}"
mtu = {dc.MTU}
rx_descriptors = 1024
tx_descriptors = 1024

[exception]
port = "{exception_device}"
allow = {json.dumps(dc.EXCEPTION_ALLOW)}

[grants]
issuer_keys = "{tmp}/issuers.pub"
mac_key = "{tmp}/golden.mackey"
capacity = 4096

[encap]
outer_source_v4 = "{dc.OUTER4}/32"
outer_source_v6 = "{s6}/128"
ttl = {dc.OUTER_TTL}

[flows]
hash_seed = "0x{dc.FLOW_HASH_SEED:016x}"

[region]
dir = "{tmp}"
cmd_dir = "{tmp}"
cmd_owner = "{user}"
"""


class Jitlb:
    """One jitlb process over a net_pcap data port and, optionally, a net_pcap
    exception port standing in for the kernel's TAP interface."""

    def __init__(self, exe, tmp, run, rx, shift_ms=0, idle_ms=500, exception=False, kernel_rx=None):
        self.tmp, self.run = Path(tmp), run
        self.out = {"wire": self.tmp / f"out-{run}.pcap"}
        self.stats = self.tmp / f"stats-{run}.json"
        self.log = self.tmp / f"jitlb-{run}.log"
        device = f"net_pcap0,rx_pcap={rx},tx_pcap={self.out['wire']}"
        exception_device = ""
        if exception:
            # The data port gets a second tx queue, the main lcore's, for the kernel's frames.
            self.out["relayed"] = self.tmp / f"out-{run}-relayed.pcap"
            self.out["kernel"] = self.tmp / f"kernel-{run}.pcap"
            device += f",tx_pcap={self.out['relayed']}"
            exception_device = f"net_pcap1,rx_pcap={kernel_rx},tx_pcap={self.out['kernel']}"
        cfg = self.tmp / f"jitlb-{run}.toml"
        user = pwd.getpwuid(os.geteuid()).pw_name
        cfg.write_text(config_text(tmp, device, exception_device, user))
        os.chmod(cfg, 0o644)
        self.cmd = [exe, "-l", "0,1", "--no-pci", *eal_memory(), "--file-prefix", file_prefix(),
                    "--log-level=lib.eal:error", "--", "--config", str(cfg),
                    "--exit-when-idle", str(idle_ms), "--stats-json", str(self.stats)]
        if shift_ms:
            self.cmd += ["--clock-shift-ms", str(shift_ms)]
        self.proc = None

    def outputs(self):
        return {stream: read_pcap(path) if path.exists() else [] for stream, path in self.out.items()}

    def start(self):
        self.logf = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.logf, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout=30):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "timeout"
        self.logf.close()
        return rc

    def output(self):
        return self.log.read_text(errors="replace")

    def counters(self):
        return json.loads(self.stats.read_text())


def run_staged(cmd, log_path, go, stage, script, until, timeout=120):
    """Runs jitlb `cmd` (which has --start-ports-after `go`): once it waits for
    its ports, pushes `script` with jitlb_stage, waits for the event `until`,
    lets the ports start, and waits for it to exit (--exit-when-idle).
    Returns (exit code, its output)."""
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while p.poll() is None and "waiting for" not in Path(log_path).read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            if p.poll() is None:
                stage.push(script)
                stage.events(until=until, wait_ms=10000)
                Path(go).touch()
            rc = p.wait(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rc, Path(log_path).read_text(errors="replace")


def file_prefix():
    """The EAL's --file-prefix: the instance and this process, so that runs never share one."""
    return f"{INSTANCE}{os.getpid()}"


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
    return ["--no-huge", "-m", "512"]


# --- expectations per run ------------------------------------------------------------------------


STREAMS = {
    "wire": "data port",
    "kernel": "exception port (to the kernel)",
    "relayed": "data port, the kernel's frames",
}


class RunPlan:
    """The cases of one run, their input frames in order, and what must come out of
    each output: the data port ("wire"), the exception port ("kernel") and the data
    port's main-lcore queue ("relayed")."""

    def __init__(self, name, shift_ms, exception):
        self.name, self.shift_ms, self.exception = name, shift_ms, exception
        self.cases = []
        self.inputs = []         # bytes, in order, into the data port
        self.kernel_inputs = []  # bytes, in order, into the exception port
        self.expected = {s: [] for s in STREAMS}  # stream -> [(case index, bytes)], in order
        self.counters = Counter()
        self.backends = defaultdict(lambda: [0, 0])  # backend address -> [packets, bytes as received]
        self.flows = set()
        self.burst_extras = []

    def add(self, case):
        self.cases.append(case)
        ci = len(self.cases) - 1
        e = case.expect
        for frame in case.inputs:
            raw = bytes(frame)
            if isinstance(e, dc.FromKernel):
                self.kernel_inputs.append(raw)
                self.expected["relayed"].append((ci, raw))
                self.count(e.counters, [raw])
                continue
            self.inputs.append(raw)
            self.counters["rx_packets"] += 1
            self.counters["rx_bytes"] += len(raw)
            if isinstance(e, dc.Out):
                built = e.build(frame)
                in_place, extra = (built, []) if isinstance(built, bytes) else built
                case.outputs.append(in_place)
                self.expected["wire"].append((ci, in_place))
                self.burst_extras += [(ci, x) for x in extra]
                self.count(e.counters, [in_place, *extra])
                if e.more_counters:
                    self.count(e.more_counters(frame))
                # The connection table takes the flow before the forwarder runs (which
                # may answer "too big" instead of forwarding).
                if "forwarded" in e.counters or "too_big_sent" in e.counters:
                    self.track(dc.flow_of(frame) if e.flow is None else e.flow, icmp_error=e.flow is not None)
                if "forwarded" in e.counters:
                    counted = self.backends[backend_of(in_place)]
                    counted[0] += 1
                    counted[1] += len(raw)
            elif isinstance(e, dc.ToKernel):
                self.expected["kernel"].append((ci, raw))
                self.count(e.counters)
            else:
                self.count(e.counters)
                if e.tracked:
                    self.track(dc.flow_of(frame))
            if len(self.inputs) % BURST == 0:
                self.end_burst()

    def count(self, counters, sent=()):
        for c in counters:
            self.counters[c] += 1
        self.counters["tx_packets"] += len(sent)
        self.counters["tx_bytes"] += sum(map(len, sent))

    def end_burst(self):
        """main.cc sends the packets the pipeline made (resets) after the burst's own."""
        self.expected["wire"] += self.burst_extras
        self.burst_extras = []

    def track(self, flow, icmp_error=False):
        """The worker's connection table: a known flow is a hit; an ICMP error adds no entry."""
        if flow in self.flows:
            self.counters["conn_hit"] += 1
        elif not icmp_error:
            self.counters["conn_new"] += 1
            self.flows.add(flow)


BACKEND_BY_MAC = {b.mac: b.address for s in dc.SERVICES for b in s.backends if b.mac}


def backend_of(out):
    """The backend a forwarded frame goes to: the outer destination of an encapsulated
    frame (sent to the next hop), else (L2 DSR) the one whose MAC it is sent to."""
    eth = Ether(out)
    if eth.dst.lower() != dc.NEXT_HOP_MAC:
        return BACKEND_BY_MAC[eth.dst.lower()]
    outer = eth.payload
    return ipaddress.ip_address(outer.dst).compressed


def check_backends(plan, backends):
    """Per backend, jitlb's `backends` (exit JSON) against the packets and bytes the
    table forwards to each; their names and addresses against the services'."""
    diffs = []
    known = {(s.name, b.id): b.address for s in dc.SERVICES for b in s.backends}
    known.update({("maglev", b.id): b.address for b in dc.MAGLEV_AFTER})
    # The live run replaces the Maglev service's backends: the one that left is no
    # longer in the backend map at exit, so its count cannot be read.
    gone = ({b.address for b in dc.SERVICE["maglev"].backends} - {b.address for b in dc.MAGLEV_AFTER}
            if plan.name == "live" else set())
    have = defaultdict(lambda: [0, 0])
    for service, by_id in backends.items():
        for bid, v in by_id.items():
            address = known.get((service, bid))
            if address is None or ipaddress.ip_address(address).compressed != v.get("address"):
                diffs.append(f"    backends: {service}/{bid} at {v.get('address')} is no backend of the table")
                continue
            have[v["address"]][0] += v["packets"]
            have[v["address"]][1] += v["bytes"]
    for address in sorted(set(have) | set(plan.backends)):
        if address in gone:
            continue
        want = plan.backends.get(address, [0, 0])
        if have.get(address, [0, 0]) != want:
            diffs.append(f"    backends: {address}: expected {want[0]} packets, {want[1]} bytes; "
                         f"jitlb counted {have.get(address, [0, 0])}")
    return diffs


def match_outputs(plan, stream, got):
    """Aligns one output's expected and actual frames (both in order); returns per-case problems."""
    problems = defaultdict(list)
    expected = plan.expected[stream]
    want = [b for _, b in expected]
    sm = difflib.SequenceMatcher(None, want, got, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        for k in range(i1, i2):
            ci, w = expected[k]
            g = got[j1 + (k - i1)] if op == "replace" and j1 + (k - i1) < j2 else None
            problems[ci].append(("missing", w, None) if g is None else ("differs", w, g))
        extra_from = j1 + (i2 - i1) if op == "replace" else j1
        for j in range(extra_from, j2):
            problems[owner_of(plan, got[j])].append(("unexpected", None, got[j]))
    return problems


def owner_of(plan, frame):
    """The case whose input a stray output frame carries (-1 if none)."""
    best = -1
    for ci, case in enumerate(plan.cases):
        for f in case.inputs:
            raw = bytes(f)
            if len(raw) > 14 and (raw[14:] in frame or raw[18:] in frame):
                best = ci
    return best


# --- scapy's view of the expected frames (no jitlb needed) ---------------------------------------


def rebuilt(frame_bytes):
    """The frame dissected by scapy and built again with every length and checksum recomputed."""
    p = Ether(frame_bytes)
    lp = p
    while lp and "error" not in type(lp).__name__.lower():  # a quote in an ICMP error is cut short
        for name in ("len", "plen", "chksum", "cksum"):
            if name in lp.fields and not (isinstance(lp, UDP) and name == "chksum" and lp.chksum == 0):
                delattr(lp, name)
        lp.raw_packet_cache = None
        lp = lp.payload
    return bytes(p)


def carries_fragment(frame_bytes):
    """Whether some IP header in the frame (outer or inner) is a fragment's."""
    p = Ether(frame_bytes)
    while p:
        if isinstance(p, IP) and (p.flags.MF or p.frag):
            return True
        if isinstance(p, IPv6ExtHdrFragment):
            return True
        p = p.payload
    return False


def selfcheck(cases):
    """Every expected frame is what scapy's own dissection says it should be."""
    bad = 0
    for case in cases:
        e = case.expect
        if not isinstance(e, dc.Out):
            continue
        for frame in case.inputs:
            built = e.build(frame)
            outs = [built] if isinstance(built, bytes) else [built[0], *built[1]]
            out = outs[0]
            p = Ether(out)
            errs = []
            # A fragment's UDP length is the datagram's, which scapy would recompute.
            if any(rebuilt(o) != o for o in outs if not carries_fragment(o)):
                errs.append("lengths or checksums do not survive scapy's rebuild")
            if "forwarded" in e.counters and e.what.startswith(("ipip", "gue")):
                _, inner = dc.l3_of(frame)
                if not out.endswith(inner):
                    errs.append("the inner packet is not the payload")
                if p.dst != dc.NEXT_HOP_MAC or p.src != dc.NODE_MAC:
                    errs.append("MACs")
                outer = p.payload
                if isinstance(outer, IP) and (outer.src != dc.OUTER4 or outer.ttl != dc.OUTER_TTL):
                    errs.append("outer IPv4 source or TTL")
                if isinstance(outer, IPv6) and (outer.src != dc.OUTER6 or outer.hlim != dc.OUTER_TTL):
                    errs.append("outer IPv6 source or hop limit")
                if e.what.startswith("gue"):
                    u = p[UDP]
                    if u.dport != dc.GUE_PORT or not 0xC000 <= u.sport <= 0xFFFF or u.len != 8 + len(inner):
                        errs.append("GUE UDP header")
            elif e.what == "l2dsr: MACs rewritten":
                if out[12:] != bytes(frame)[12:] or p.src != dc.NODE_MAC:
                    errs.append("more than the MACs changed")
            elif e.what == "arp reply":
                a = p[ARP]
                q = Ether(bytes(frame))[ARP]
                if a.op != 2 or a.hwsrc != dc.NODE_MAC or a.psrc != q.pdst or a.pdst != q.psrc or p.dst != q.hwsrc:
                    errs.append("ARP reply fields")
            elif e.what == "neighbour advertisement":
                na = p[ICMPv6ND_NA]
                if p[IPv6].hlim != 255 or na.O != 1 or p[ICMPv6NDOptDstLLAddr].lladdr != dc.NODE_MAC:
                    errs.append("NA fields")
            elif "resets" in e.what:
                q, (ip, _) = Ether(bytes(frame)), dc.l3_of(frame)
                c, b = p[TCP], Ether(outs[1])
                if p.dst != q.src or (p[IP].src, p[IP].dst) != (ip.dst, ip.src) or not c.flags.R or \
                        (c.sport, c.dport) != (q[TCP].dport, q[TCP].sport):
                    errs.append("reset to the client")
                inner = b[IP].payload
                if not isinstance(inner, IP) or (inner.src, inner.dst) != (ip.src, ip.dst) or \
                        not inner[TCP].flags.R or inner[TCP].seq != q[TCP].seq:
                    errs.append("reset to the backend")
            if errs:
                bad += 1
                print(f"SELFCHECK FAIL {case.name}: {'; '.join(errs)}")
    print(f"selfcheck: expected frames of {sum(isinstance(c.expect, dc.Out) for c in cases)} cases "
          f"checked against scapy's dissection, {bad} bad")
    return bad == 0


# --- the test ------------------------------------------------------------------------------------------


def service_script():
    script = []
    for s in dc.SERVICES:
        cmd = {"type": "service_set", "name": s.name, "mode": s.mode, "table_size": s.table_size,
               "vips": [{"address": a, "port": p, "protocol": proto} for a, p, proto in s.vips]}
        if s.mode == "gue":
            cmd["gue_port"] = s.gue_port
        if s.disabled:
            cmd["disabled"] = True
        script.append(cmd)
    for s in dc.SERVICES:
        script.append({"type": "backend_set", "service": s.name,
                       "backends": [{k: v for k, v in {"id": b.id, "address": b.address, "weight": b.weight,
                                                       "mac": b.mac}.items() if v is not None}
                                    for b in s.backends]})
    return script


class Report:
    def __init__(self):
        self.failed = 0
        self.lines = 0

    def line(self, ok, text, detail=None):
        self.lines += 1
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
        if detail and not ok:
            print(detail)
        return ok


def check_run(report, plan, outputs, counters):
    # The kernel's frames leave the data port on whichever queue jitlb relays them
    # by, at a time no table can predict: they are taken out of the data port's
    # stream (in their own order) and matched apart.
    outputs = {s: list(outputs.get(s, [])) for s in STREAMS}
    for _, frame in plan.expected["relayed"]:
        if frame not in outputs["relayed"] and frame in outputs["wire"]:
            outputs["wire"].remove(frame)
            outputs["relayed"].append(frame)
    problems = defaultdict(list)
    for stream in STREAMS:
        for ci, ps in match_outputs(plan, stream, outputs[stream]).items():
            problems[ci] += [(stream, *p) for p in ps]
    for ci, case in enumerate(plan.cases):
        e = case.expect
        what = (e.what if isinstance(e, dc.Out) else "to the kernel" if isinstance(e, dc.ToKernel)
                else "relayed" if isinstance(e, dc.FromKernel) else "drop: " + " + ".join(e.counters))
        n = len(case.inputs)
        label = f"[{plan.name}] {case.name}  ({what}{f', {n} frames' if n > 1 else ''})"
        ps = problems.get(ci, [])
        if case.sets == "maglev":
            check_maglev(report, label, case, ps)
            continue
        detail = []
        for stream, kind, w, g in ps[:3]:
            where = STREAMS[stream]
            if kind == "missing":
                detail.append(f"    missing from the {where}:\n{hexdump_diff(w, b'')}")
            elif kind == "unexpected":
                detail.append(f"    unexpected on the {where}:\n      {g.hex()}\n      {Ether(g).summary()}")
            else:
                detail.append(f"    differs on the {where}:\n{hexdump_diff(w, g)}")
        report.line(not ps, label, "\n".join(detail))
    stray = problems.get(-1, [])
    if stray:
        report.line(False, f"[{plan.name}] {len(stray)} output frame(s) no case accounts for",
                    "\n".join(f"      {STREAMS[s]}: {g.hex()}" for s, _, _, g in stray[:5]))
    # Counters: every one jitlb reports must equal the table's sum. Per service,
    # the packets forwarded add up to `forwarded`, with their bytes as received.
    counters = dict(counters)
    services = counters.pop("services", None)
    backends = counters.pop("backends", None)
    diffs = []
    # Timing and the main lcore's totals are not the table's: only their shape is checked.
    counters.pop("control", None)
    counters.pop("ports", None)
    counters.pop("next_hops", None)  # the resolvers at exit (none: the cases use next_hop_mac)
    for k in ("grant_backlog", "grant_backlog_high_water", "grants_verified", "grants_activated", "grants_rejected",
              "revocations_applied"):  # the main lcore's grant work: its events are checked instead
        counters.pop(k, None)
    cycles = counters.pop("cycles_per_packet", None)
    busy_cycles, busy_polls = counters.pop("busy_cycles", None), counters.pop("busy_polls", None)
    if counters.get("rx_packets") and not (busy_polls and busy_cycles and busy_cycles >= busy_polls and cycles):
        diffs.append(f"    busy_cycles {busy_cycles}, busy_polls {busy_polls}, cycles_per_packet {cycles}: "
                     "a worker that received packets counts its busy polls and cycles")
    if services is None:
        diffs.append("    services: no per-service counters in jitlb's stats")
    else:
        per_service = sum(v["packets"] for v in services.values())
        if per_service != counters.get("forwarded"):
            diffs.append(f"    services: packets add up to {per_service}, forwarded is {counters.get('forwarded')}")
        if any(v["bytes"] < 42 * v["packets"] for v in services.values()):
            diffs.append(f"    services: fewer bytes than packets of 42 bytes: {services}")
    if backends is None:
        diffs.append("    backends: no per-backend counters in jitlb's stats")
    else:
        diffs += check_backends(plan, backends)
    for k in sorted(set(counters) | set(plan.counters)):
        want, have = plan.counters.get(k, 0), counters.get(k)
        if have is None:
            diffs.append(f"    {k}: expected {want}, not in jitlb's stats")
        elif want != have:
            diffs.append(f"    {k}: expected {want}, jitlb counted {have}")
    nonzero = ", ".join(f"{k}={v}" for k, v in sorted(plan.counters.items())
                        if v and not k.startswith(("rx_", "tx_")))
    n_out = sum(len(v) for v in outputs.values())
    report.line(not diffs, f"[{plan.name}] counters equal the table's sums ({len(plan.inputs)} frames in, "
                f"{n_out} out; {nonzero})", "\n".join(diffs))


def check_maglev(report, label, case, problems):
    total = len(case.outputs)
    spread = Counter(Ether(o)[IP].dst for o in case.outputs)
    share = total / len(dc.SERVICE["maglev"].backends)
    even = all(0.7 * share <= spread[b.address] <= 1.3 * share for b in dc.SERVICE["maglev"].backends)
    wrong = [p for p in problems if p[1] != "missing"] + [p for p in problems if p[1] == "missing"]
    detail = [f"    {total - len(problems)}/{total} outputs equal the model's (backend and bytes)"]
    for _, kind, w, g in wrong[:3]:
        detail.append(f"    {kind}:\n{hexdump_diff(w or b'', g or b'')}")
    spread_text = ", ".join(f"{b.address}:{spread[b.address]}" for b in dc.SERVICE["maglev"].backends)
    report.line(not problems and even, f"{label}: spread {spread_text}", "\n".join(detail))


def run_test(args):
    if os.geteuid() != 0:
        print("SKIP: jitlb needs root (DPDK EAL, hugepages)")
        return SKIP
    for exe in (args.jitlb, args.stage):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not an executable")
            return 1
    cases = dc.cases()
    cases.append(dc.maglev_case())
    if not selfcheck(cases):
        return 1

    tmp = args.keep or tempfile.mkdtemp(prefix="dataplane_golden.")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    print(f"work dir: {tmp}")
    report = Report()
    started = time.monotonic()
    stage = Stage(args.stage, tmp, args.verbose)
    key = stage.keygen()
    print(f"issuer key {key['key_id']}")

    plans = {name: RunPlan(name, shift, exception) for name, (shift, exception) in dc.RUNS.items()}
    for case in cases:
        case.outputs = []
        plans[case.run].add(case)
    for plan in plans.values():
        plan.end_burst()

    # --- run "live": jitlb up; grants pushed and acknowledged; one grant ends mid-run ---------------
    fifo = Path(tmp) / "live.fifo"
    os.mkfifo(fifo)
    live = Jitlb(args.jitlb, tmp, "live", fifo, idle_ms=0)
    live.start()
    try:
        writer = open_fifo(fifo, live)
        if writer is None:
            rc = live.wait(10)
            log = live.output()
            if "EAL init failed" in log:
                print(f"SKIP: jitlb cannot start a DPDK EAL here:\n{log[-2000:]}")
                return SKIP
            print(f"FAIL: jitlb exited ({rc}) before opening its pcap port:\n{log[-3000:]}")
            return 1
        try:
            writer.write(PCAP_HEADER)
            ok = live_phase(report, stage, writer, plans["live"])
        finally:
            writer.close()
        time.sleep(0.3)  # the last frames through the pipeline
    except RuntimeError as e:  # jitlb_stage failed: nothing to build the later runs on
        report.line(False, "[live] jitlb_stage", f"    {e}")
        return finish(report, tmp, args, started)
    finally:
        live.stop()  # --exit-when-idle is off in this run: it waits for the phases
        rc = live.wait(20)
    if rc != 0:
        report.line(False, f"[live] jitlb exited with {rc}", live.output()[-3000:])
    elif ok:
        check_run(report, plans["live"], live.outputs(), live.counters())

    # --- the restarts: services pushed while jitlb is down, drained before its ports start ---------
    for name, plan in plans.items():
        if name == "live":
            continue
        try:
            stage.push(service_script())
        except RuntimeError as e:
            report.line(False, f"[{name}] services pushed while jitlb is down", f"    {e}")
            continue
        rx = Path(tmp) / f"in-{name}.pcap"
        write_pcap(rx, plan.inputs)
        kernel_rx = Path(tmp) / f"kernel-in-{name}.pcap"
        write_pcap(kernel_rx, plan.kernel_inputs)
        j = Jitlb(args.jitlb, tmp, name, rx, shift_ms=plan.shift_ms, exception=plan.exception, kernel_rx=kernel_rx)
        j.start()
        rc = j.wait(60)
        if args.verbose:
            print(j.output()[-3000:])
        if rc != 0:
            report.line(False, f"[{name}] jitlb exited with {rc}", j.output()[-3000:])
            continue
        check_run(report, plan, j.outputs(), j.counters())

    return finish(report, tmp, args, started)


def finish(report, tmp, args, started):
    took = time.monotonic() - started
    kept = f" (work dir {tmp} kept)" if report.failed and not args.keep else ""
    print(f"\n{report.lines - report.failed}/{report.lines} checks passed in {took:.1f} s{kept}")
    if not report.failed and not args.keep:
        subprocess.run(["rm", "-rf", "--", tmp], check=False)
    return 1 if report.failed else 0


def open_fifo(fifo, jitlb, timeout=30):
    """Opens the FIFO jitlb's pcap port reads from, once jitlb opens it (None if jitlb died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "wb", buffering=0)
        except OSError:  # ENXIO: no reader yet
            if jitlb.proc.poll() is not None:
                return None
            time.sleep(0.01)
    return None


def live_phase(report, stage, writer, plan):
    """Pushes to a running jitlb, checks its events, then feeds the two phases of frames."""
    now_ms = int(time.time() * 1000)
    texts = {g.name: stage.sign(g, now_ms) for g in dc.GRANTS}
    ids = {name: grant_id_of(t) for name, t in texts.items()}
    grants = []
    # The grants jitlb must refuse first: events come in verification order.
    for g in sorted(dc.GRANTS, key=lambda g: g.expect_event == "grant_activated"):
        if g.bad_signature:
            raw = bytearray(signed_bytes(texts[g.name]))
            raw[-1] ^= 0x01  # the signature's last byte
            grants.append({"type": "grant", "raw_hex": raw.hex()})
        else:
            grants.append({"type": "grant", "text": texts[g.name]})
    pushed = stage.push(service_script() + grants)
    n_services = len(dc.SERVICES) * 2
    n_activated = sum(g.expect_event == "grant_activated" for g in dc.GRANTS)
    events, r = stage.events(until=f"grant_activated:{n_activated}", wait_ms=10000)
    ok = check_events(report, "services and grants pushed to a running jitlb", events, r, {
        **{("service_applied", s.name): 2 for s in dc.SERVICES},
        **{(g.expect_event, ids[g.name]): 1 for g in dc.GRANTS},
    }, reasons={ids[g.name]: g.expect_reason for g in dc.GRANTS if g.expect_reason})
    report.line(len(pushed) == n_services + len(grants), f"jitlb_stage pushed {len(pushed)} commands")

    revokes = [g for g in dc.GRANTS if g.revoke]
    stage.push([{"type": "revoke", "grant_id": ids[g.name], "not_after_ms": now_ms + g.not_after_s * 1000,
                 "reason": "operator"} for g in revokes])
    events, r = stage.events(until=f"grant_revoked:{len(revokes)}", wait_ms=10000)
    ok &= check_events(report, "revocation acknowledged", events, r,
                       {("grant_revoked", ids[g.name]): 1 for g in revokes})

    # The short grant, pushed now: valid for LIVE_GRANT_S from now.
    short = dc.GrantSpec("live-short", f"{dc.C4_LIVE}/32", "web", -60, dc.LIVE_GRANT_S)
    t0 = int(time.time() * 1000)
    text = stage.sign(short, t0)
    stage.push([{"type": "grant", "text": text}])
    events, r = stage.events(until="grant_activated:1", wait_ms=10000)
    ok &= check_events(report, f"a grant valid for {dc.LIVE_GRANT_S} s activated", events, r,
                       {("grant_activated", grant_id_of(text)): 1})
    phases = {p: [bytes(f) for c in plan.cases if c.phase == p for f in c.inputs] for p in (1, 2, 3)}
    assert all(len(f) == 2 * BURST for f in phases.values()), "a phase: one burst to refresh, one of cases"
    writer.write(pcap_records(phases[1]))
    sent1 = time.time() * 1000
    events, r = stage.events(until="grant_expired:1", wait_ms=int(dc.LIVE_GRANT_S * 1000 + 5000))
    ok &= check_events(report, "GrantExpired posted at the grant's end", events, r,
                       {("grant_expired", grant_id_of(text)): 1})
    report.line(sent1 < t0 + dc.LIVE_GRANT_S * 1000 - 500,
                f"phase 1 frames were sent {t0 + dc.LIVE_GRANT_S * 1000 - sent1:.0f} ms before the grant ended")
    writer.write(pcap_records(phases[2]))

    stage.push([{"type": "backend_set", "service": "maglev",
                 "backends": [{"id": b.id, "address": b.address} for b in dc.MAGLEV_AFTER]}])
    events, r = stage.events(until="service_applied:1", wait_ms=10000)
    ok &= check_events(report, "the Maglev service's backends changed", events, r, {("service_applied", "maglev"): 1})
    writer.write(pcap_records(phases[3]))

    # DPDK telemetry answers /jitlb/stats with the counters while jitlb runs.
    time.sleep(0.3)
    tel = subprocess.run(["/usr/bin/dpdk-telemetry.py", "-f", file_prefix()], input="/jitlb/stats\n/jitlb/services\n/jitlb/backends\n/jitlb/backends,maglev\n",
                         capture_output=True, text=True, timeout=30)
    stats = per_service = None
    backend_answers = []  # telemetry keys an answer by the command without its parameters
    for line in tel.stdout.splitlines():
        if line.strip().startswith("{"):
            answer = json.loads(line)
            stats = answer.get("/jitlb/stats", stats)
            per_service = answer.get("/jitlb/services", per_service)
            if "/jitlb/backends" in answer:
                backend_answers.append(answer["/jitlb/backends"])
    per_backend, maglev_backends = (backend_answers + [None, None])[:2]
    ok &= report.line(stats is not None and stats.get("rx_packets", 0) >= 6 * BURST and "no_grant" in stats,
                      f"[live] dpdk-telemetry.py /jitlb/stats while running: "
                      f"rx_packets={stats.get('rx_packets') if stats else None}",
                      f"    exit {tel.returncode}: {tel.stdout[-300:]} {tel.stderr[-300:]}")
    maglev = (per_service or {}).get("maglev") or {}
    ok &= report.line(maglev.get("packets", 0) >= 1 and maglev.get("bytes", 0) >= 54 * maglev.get("packets", 0) and
                      per_service and all(v.get("packets", 0) <= stats.get("tx_packets", 0) for v in per_service.values()),
                      f"[live] dpdk-telemetry.py /jitlb/services: maglev {maglev}",
                      f"    {json.dumps(per_service)[:300]}")
    # Per backend: keyed service/backend, the Maglev service's after the change
    # (the one that left is no longer named), adding up to at most its service's.
    # (Telemetry keys take [A-Za-z0-9_/] only: "maglev-1" is keyed maglev_1.)
    after = {f"maglev/{b.id.replace('-', '_')}" for b in dc.MAGLEV_AFTER}
    in_maglev = {k: v for k, v in (per_backend or {}).items() if k.startswith("maglev/")}
    ok &= report.line(set(in_maglev) == after and maglev_backends == in_maglev and
                      all(v["service"] == "maglev" and k == f"maglev/{v['backend'].replace('-', '_')}" and
                          v["address"] and v["bytes"] >= 54 * v["packets"] for k, v in in_maglev.items()) and
                      0 < sum(v["packets"] for v in in_maglev.values()) <= maglev.get("packets", 0),
                      f"[live] dpdk-telemetry.py /jitlb/backends: maglev "
                      f"{ {k.split('/')[1]: v.get('packets') for k, v in in_maglev.items()} }",
                      f"    {json.dumps(per_backend)[:600]}\n    {json.dumps(maglev_backends)[:300]}")

    # Denials are sampled into the event ring: the client whose grant ended knocked.
    events, r = stage.events(wait_ms=1000)
    check_events(report, "nothing but denial samples after the last change", events, r, {})
    ended = [d for d in DENIAL_SAMPLES if d["source"] == dc.C4_LIVE]
    ok &= report.line(bool(ended) and all(d["service_id"] > 0 and d["count"] >= 1 for d in DENIAL_SAMPLES) and
                      {d["reason"] for d in ended} <= {"grant_expired", "no_grant"},
                      f"[live] denial samples: {len(DENIAL_SAMPLES)}, {len(ended)} from {dc.C4_LIVE} after its grant "
                      f"ended ({sorted({d['reason'] for d in ended})})",
                      "    " + "\n    ".join(json.dumps(d) for d in DENIAL_SAMPLES[:5]))
    return ok


DENIAL_SAMPLES = []  # denial_sample events seen in the live run (checked at its end)


def check_events(report, what, events, result, want, reasons=None):
    DENIAL_SAMPLES.extend(e for e in events if e["type"] == "denial_sample")
    events = [e for e in events if e["type"] != "denial_sample"]
    got = Counter()
    for e in events:
        got[(e["type"], e.get("grant_id") or e.get("name"))] += 1
    problems = []
    for k, n in want.items():
        if got[k] != n:
            problems.append(f"    {k[0]} for {k[1]}: expected {n}, got {got[k]}")
    for e in events:
        if reasons and e.get("grant_id") in reasons and e["type"] in ("grant_rejected", "grant_revoked"):
            if e["reason"] != reasons[e["grant_id"]]:
                problems.append(f"    grant {e['grant_id']}: {e['type']} {e['reason']}, expected "
                                f"{reasons[e['grant_id']]} ({e.get('text')})")
    unexpected = [e for e in events if (e["type"], e.get("grant_id") or e.get("name")) not in want]
    for e in unexpected:
        problems.append(f"    unexpected event: {json.dumps(e)}")
    if result.returncode != 0:
        problems.append(f"    jitlb_stage events: exit {result.returncode}: {result.stderr.strip()}")
    summary = ", ".join(f"{t}" for t in sorted({k[0] for k in want}))
    report.line(not problems, f"[live] events: {what} ({len(events)} events: {summary})", "\n".join(problems))
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jitlb")
    ap.add_argument("stage")
    ap.add_argument("--selfcheck", action="store_true", help="only check the expected frames with scapy")
    ap.add_argument("--keep", help="work in this directory and keep it")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.selfcheck:
        cases = dc.cases() + [dc.maglev_case()]
        return 0 if selfcheck(cases) else 1
    return run_test(args)


if __name__ == "__main__":
    sys.exit(main())
