#!/usr/bin/python3
"""The main job end to end (issue 8): scripts/demo --quick in network namespaces
(a bridge, two clients, three L2 DSR backends, jitlb on net_af_packet, jitd and
jitctl), with the binaries under test. Each of the demo's ten steps is one
check here, with what was expected and what was seen when it fails.

Usage: test_netns_e2e.py JITLB JITD JITCTL   (as root; exit 77 = skipped)
The namespaces are named jd-*; a demo left up with --keep is taken down first.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.environ.get("JITLB_DEMO", os.path.join(HERE, "..", "..", "scripts", "demo"))


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


if len(sys.argv) != 4:
    sys.exit(__doc__)
jitlb, jitd, jitctl = (os.path.abspath(a) for a in sys.argv[1:])
if os.geteuid() != 0:
    skip("needs root (network namespaces, DPDK hugepages)")
for tool in ("ip", "ethtool", "tcpdump", "setpriv"):
    if not shutil.which(tool):
        skip(f"{tool} is not installed (scripts/setup installs it)")
try:
    free = int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read())
except OSError:
    free = 0
if free < 64:
    skip(f"{free} free 2 MiB hugepages, 64 needed (scripts/setup reserves them)")
probe = f"jd-probe{os.getpid()}"
if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
    skip("cannot create network namespaces here")
subprocess.run(["ip", "netns", "del", probe], capture_output=True)

report = tempfile.NamedTemporaryFile(prefix="netns-e2e.", suffix=".json", delete=False).name
try:
    r = subprocess.run([DEMO, "--quick", "--jitlb", jitlb, "--jitd", jitd, "--jitctl", jitctl, "--report", report],
                       timeout=270)
    rc = r.returncode
except subprocess.TimeoutExpired:
    print("FAIL the demo did not finish in 270 s")
    subprocess.run([DEMO, "--down"])
    sys.exit(1)
try:
    rep = json.load(open(report))
except (OSError, json.JSONDecodeError):
    rep = {"ok": False, "steps": []}
os.unlink(report)

print("\n== netns e2e: one check per step")
failed = 0
for st in rep["steps"]:
    if st["ok"]:
        print(f"ok   {st['step']:>2}. {st['title']} ({st['seconds']} s)")
    else:
        failed += 1
        print(f"FAIL {st['step']:>2}. {st['title']}")
        for c in st["checks"]:
            if not c["ok"]:
                print(f"       {c['what']}: expected {c['expected']}, seen {c['seen']}")
missing = 10 - len(rep["steps"])
if missing:
    print(f"FAIL {missing} steps did not run")
print(f"netns e2e: {len(rep['steps']) - failed} of 10 steps passed in {rep.get('seconds', '?')} s (demo exit {rc})")
sys.exit(0 if rc == 0 and rep.get("ok") and not failed and not missing else 1)
