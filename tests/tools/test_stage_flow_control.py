#!/usr/bin/python3
"""jitlb_stage push --max-in-flight against a real jitlb: more grants than jitlb's
verification backlog holds (4096) are all activated, none refused as backlog_full,
and the backlog never holds more than the limit. Without the flag, the same push
overflows the backlog (so the check can fail).

Usage: test_stage_flow_control.py JITLB JITLB_STAGE JITCTL   (as root; exit 77 = skipped)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

GRANTS = 10000
LIMIT = 1024


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


if len(sys.argv) != 4:
    sys.exit(__doc__)
jitlb, stage, jitctl = (os.path.abspath(a) for a in sys.argv[1:])
if os.geteuid() != 0:
    skip("needs root (DPDK hugepages)")
try:
    free = int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read())
except OSError:
    free = 0
if free < 32:
    skip(f"{free} free 2 MiB hugepages, 32 needed (scripts/setup reserves them)")

failed = []


def check(cond, what):
    print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        failed.append(what)


def run_once(work, max_in_flight):
    """Stages GRANTS grants into a fresh jitlb whose ports wait; returns its counters."""
    os.makedirs(work)
    secret, public = f"{work}/issuer.key", f"{work}/issuers.pub"
    subprocess.run([stage, "keygen", "--secret", secret, "--public", public], check=True, capture_output=True)
    mac = f"{work}/jitlb.mackey"
    with open(os.open(mac, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(os.urandom(32))
    with open(f"{work}/jitlb.toml", "w") as f:
        f.write(f"""instance = "fc"
addresses = ["192.0.2.10"]
[[port]]
name = "null"
device = "net_null0"
mac = "02:00:00:00:0b:01"
next_hop_mac = "02:00:00:00:0f:01"
[grants]
issuer_keys = "{public}"
mac_key = "{mac}"
capacity = 16384
[encap]
outer_source_v4 = "10.255.0.0/16"
[region]
dir = "{work}"
cmd_dir = "{work}"
cmd_owner = "root"
""")
    script = [{"type": "service_set", "name": "web", "mode": "ipip", "table_size": 251,
               "vips": [{"address": "192.0.2.100", "port": 80, "protocol": "tcp"}]},
              {"type": "backend_set", "service": "web", "backends": [{"id": "b0", "address": "10.1.0.1"}]},
              {"type": "grant_range", "secret": secret, "service": "web", "first_source": "100.64.0.0",
               "count": GRANTS, "duration_s": 600}]
    with open(f"{work}/script.json", "w") as f:
        json.dump(script, f)
    log = open(f"{work}/jitlb.log", "w")
    dut = subprocess.Popen([jitlb, "-l", "0,1", "--no-pci", "--in-memory", f"--file-prefix=fc{os.getpid()}",
                            "--log-level=lib.eal:error", "--", "--config", f"{work}/jitlb.toml",
                            "--start-ports-after", f"{work}/go"], stdout=log, stderr=subprocess.STDOUT)
    region = ["--dir", work, "--instance", "fc", "--state-owner", "0"]
    try:
        push = [stage, "push", *region, "--script", f"{work}/script.json", "--summary", "--wait-ms", "20000"]
        if max_in_flight:
            push += ["--max-in-flight", str(max_in_flight)]
        subprocess.run(push, check=True, capture_output=True, timeout=120)
        # Every grant answered (activated or rejected), by jitlb's own counters.
        counters = {}
        deadline = time.time() + 60
        while time.time() < deadline:
            stats = subprocess.run([jitctl, "--json", "stats", "--state-file", f"{work}/jitlb-fc.state",
                                    "--owner", "root"], capture_output=True, text=True, timeout=10)
            counters = json.loads(stats.stdout)["counters"] if stats.returncode == 0 else {}
            if counters.get("grants_activated", 0) + counters.get("grants_rejected", 0) >= GRANTS:
                break
            time.sleep(0.2)
        return counters
    finally:
        dut.terminate()
        dut.wait(timeout=30)


with tempfile.TemporaryDirectory(prefix="stage-fc.") as tmp:
    counters = run_once(f"{tmp}/limited", LIMIT)
    activated, rejected = counters.get("grants_activated"), counters.get("grants_rejected")
    check(activated == GRANTS and rejected == 0,
          f"--max-in-flight {LIMIT}: all {GRANTS} grants activated ({activated}), none rejected ({rejected})")
    high = counters.get("grant_backlog_high_water")
    check(high is not None and 0 < high <= LIMIT, f"the backlog never held more than {LIMIT} (high water {high})")

    counters = run_once(f"{tmp}/unlimited", 0)
    rejected = counters.get("grants_rejected")
    check(rejected is not None and rejected > 0 and counters.get("grant_backlog_high_water") == 4096,
          f"without --max-in-flight the same push fills the backlog (4096) and grants are refused ({rejected})")

print(f"FAIL: {len(failed)} of 3 checks failed" if failed else "PASS")
sys.exit(1 if failed else 0)
