#!/usr/bin/python3
"""Next-hop resolution for real: jitlb on net_af_packet over a veth pair, in its own
network namespace, with [[port]] next_hop / next_hop_v6 and no next_hop_mac; the peer
namespace's Linux kernel is the router and holds both next-hop addresses.

1. While the peer holds neither address, jitlb asks (ARP, neighbour solicitations)
   without an answer: a granted client packet to an IP-in-IP service is dropped and
   counted as next_hop_unresolved, and nothing encapsulated leaves jitlb.
2. The peer gets 192.0.2.1 and 2001:db8:aa::1: its kernel answers, jitlb resolves
   both (next_hops_resolved = 2) from the replies it accepted.
3. Granted client packets (IPv4 to an IPv4 backend, IPv6 to an IPv6 backend) leave
   jitlb IP-in-IP encapsulated with the peer veth's MAC as destination, captured in
   the peer namespace.

Usage: test_next_hop_e2e.py JITLB JITLB_STAGE JITCTL   (as root; exit 77 = skipped)
Namespaces arpd<pid> / arpp<pid>; everything is removed at the end.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

PY = "/usr/bin/python3"


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


if len(sys.argv) != 4:
    sys.exit(__doc__)
jitlb, stage, jitctl = (os.path.abspath(a) for a in sys.argv[1:])
if os.geteuid() != 0:
    skip("needs root (network namespaces, DPDK hugepages)")
if not shutil.which("ip"):
    skip("ip is not installed")
if subprocess.run([PY, "-c", "import scapy.all"], capture_output=True).returncode != 0:
    skip(f"{PY} has no scapy")
try:
    free = int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read())
except OSError:
    free = 0
if free < 32:
    skip(f"{free} free 2 MiB hugepages, 32 needed (scripts/setup reserves them)")

tag = str(os.getpid() % 100000)
NS_DUT, NS_PEER = f"arpd{tag}", f"arpp{tag}"
IF_DUT, IF_PEER = f"arpd{tag}", f"arpp{tag}"  # interface names: at most 15 characters
DUT_MAC = "02:00:00:00:a0:01"
CLIENT4, VIP4, BACKEND4 = "198.51.100.7", "203.0.113.10", "172.16.0.1"
CLIENT6, VIP6, BACKEND6 = "2001:db8:c::7", "2001:db8:aa::64", "fd00:b::1"

failed = []


def check(cond, what):
    print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        failed.append(what)


def sh(*args, ns=None, check_rc=True, **kw):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def cleanup():
    for ns in (NS_DUT, NS_PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# Sends client frames from the peer (it is the router clients' traffic comes
# through too) and captures what jitlb sends back encapsulated (IP-in-IP:
# IPv4 protocol 4, IPv6 next header 41), for `seconds`. Prints JSON.
PEER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from scapy.all import AsyncSniffer, Ether, IP, IPv6, TCP, sendp, conf
    conf.verb = 0
    iface, peer_mac, dut_mac, c4, v4, c6, v6, seconds = sys.argv[1:9]
    def encapsulated(p):
        return (IP in p and p[IP].proto == 4) or (IPv6 in p and p[IPv6].nh == 41)
    sniffer = AsyncSniffer(iface=iface, lfilter=encapsulated, store=True)
    sniffer.start()
    time.sleep(0.5)
    frames = [Ether(src=peer_mac, dst=dut_mac) / IP(src=c4, dst=v4) / TCP(sport=40000, dport=80, flags="S"),
              Ether(src=peer_mac, dst=dut_mac) / IPv6(src=c6, dst=v6) / TCP(sport=40001, dport=80, flags="S")]
    for _ in range(3):
        sendp(frames, iface=iface)
        time.sleep(0.1)
    time.sleep(float(seconds))
    got = sniffer.stop() or []
    out = []
    for p in got:
        outer = p[IP] if IP in p and p[IP].proto == 4 else p[IPv6]
        out.append({"dst": p[Ether].dst, "src": p[Ether].src, "family": 4 if outer.version == 4 else 6,
                    "outer_dst": outer.dst, "inner_src": c4 if outer.version == 4 else c6})
    print(json.dumps(out))
""")


def run_peer(seconds):
    r = sh(PY, "-c", PEER_SCRIPT, IF_PEER, peer_mac, DUT_MAC, CLIENT4, VIP4, CLIENT6, VIP6, str(seconds),
           ns=NS_PEER, timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1])


def counters():
    r = subprocess.run([jitctl, "--json", "stats", "--state-file", f"{work}/jitlb-arp.state", "--owner", "root"],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return {}
    stats = json.loads(r.stdout)
    return {**stats.get("counters", {}), **stats.get("drops", {})}


def wait_for(pred, seconds):
    deadline = time.time() + seconds
    c = counters()
    while time.time() < deadline and not pred(c):
        time.sleep(0.2)
        c = counters()
    return c


cleanup()
dut = None
work = tempfile.mkdtemp(prefix="next-hop-e2e.")
try:
    sh("ip", "netns", "add", NS_DUT)
    sh("ip", "netns", "add", NS_PEER)
    sh("ip", "link", "add", IF_DUT, "netns", NS_DUT, "type", "veth", "peer", "name", IF_PEER, "netns", NS_PEER)
    # jitlb's side: no address, no IPv6 of the kernel's own (no noise on the link).
    sh("sysctl", "-qw", f"net.ipv6.conf.{IF_DUT}.disable_ipv6=1", ns=NS_DUT)
    sh("ip", "link", "set", IF_DUT, "up", ns=NS_DUT)
    sh("ip", "link", "set", IF_PEER, "up", ns=NS_PEER)
    sh("ip", "link", "set", "lo", "up", ns=NS_PEER)
    peer_mac = json.loads(sh("ip", "-j", "link", "show", "dev", IF_PEER, ns=NS_PEER).stdout)[0]["address"]

    secret, public = f"{work}/issuer.key", f"{work}/issuers.pub"
    subprocess.run([stage, "keygen", "--secret", secret, "--public", public], check=True, capture_output=True)
    with open(os.open(f"{work}/jitlb.mackey", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(os.urandom(32))
    with open(f"{work}/jitlb.toml", "w") as f:
        f.write(f"""instance = "arp"
addresses = ["192.0.2.10", "2001:db8:aa::10"]
[[port]]
name = "wan"
device = "net_af_packet{tag},iface={IF_DUT}"
mac = "{DUT_MAC}"
next_hop = "192.0.2.1"
next_hop_v6 = "2001:db8:aa::1"
[grants]
issuer_keys = "{public}"
mac_key = "{work}/jitlb.mackey"
[encap]
outer_source_v4 = "10.255.0.0/16"
outer_source_v6 = "fd00:ff::/64"
[region]
dir = "{work}"
cmd_dir = "{work}"
cmd_owner = "root"
""")
    script = [
        {"type": "service_set", "name": "web4", "mode": "ipip", "table_size": 251,
         "vips": [{"address": VIP4, "port": 80, "protocol": "tcp"}]},
        {"type": "backend_set", "service": "web4", "backends": [{"id": "b4", "address": BACKEND4}]},
        {"type": "service_set", "name": "web6", "mode": "ipip", "table_size": 251,
         "vips": [{"address": VIP6, "port": 80, "protocol": "tcp"}]},
        {"type": "backend_set", "service": "web6", "backends": [{"id": "b6", "address": BACKEND6}]},
        {"type": "grant_range", "secret": secret, "service": "web4", "first_source": CLIENT4, "count": 1,
         "duration_s": 600},
        {"type": "grant_range", "secret": secret, "service": "web6", "first_source": CLIENT6, "count": 1,
         "duration_s": 600},
    ]
    with open(f"{work}/script.json", "w") as f:
        json.dump(script, f)
    log = open(f"{work}/jitlb.log", "w")
    dut = subprocess.Popen(["ip", "netns", "exec", NS_DUT, jitlb, "-l", "0,1", "--no-pci", "--in-memory",
                            f"--file-prefix=arp{tag}", "--log-level=lib.eal:error", "--",
                            "--config", f"{work}/jitlb.toml", "--start-ports-after", f"{work}/go",
                            "--stats-json", f"{work}/stats.json"],
                           stdout=log, stderr=subprocess.STDOUT)
    region = ["--dir", work, "--instance", "arp", "--state-owner", "0"]
    subprocess.run([stage, "push", *region, "--script", f"{work}/script.json", "--summary", "--wait-ms", "20000"],
                   check=True, capture_output=True, timeout=60)
    open(f"{work}/go", "w").close()

    # 1. Nobody answers yet.
    c = wait_for(lambda c: c.get("next_hop_requests_sent", 0) >= 4, 10)
    check(c.get("next_hops_configured") == 2 and c.get("next_hops_resolved") == 0,
          f"two next hops configured, none resolved while the peer holds neither address "
          f"({c.get('next_hops_configured')}, {c.get('next_hops_resolved')})")
    check(c.get("next_hop_requests_sent", 0) >= 4,
          f"jitlb keeps asking (ARP and NS, about one each per second): {c.get('next_hop_requests_sent')} sent")
    seen = run_peer(1)
    c = counters()
    check(seen == [], f"nothing encapsulated left jitlb while unresolved (captured {len(seen)})")
    check(c.get("next_hop_unresolved", 0) >= 6 and c.get("forwarded", 0) == 0,
          f"the 6 granted packets were dropped as next_hop_unresolved ({c.get('next_hop_unresolved')}), "
          f"none forwarded ({c.get('forwarded')})")

    # 2. The router appears; its kernel answers the next ARP and NS.
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", IF_PEER, ns=NS_PEER)
    sh("ip", "-6", "addr", "add", "2001:db8:aa::1/64", "dev", IF_PEER, "nodad", ns=NS_PEER)
    c = wait_for(lambda c: c.get("next_hops_resolved") == 2, 10)
    check(c.get("next_hops_resolved") == 2,
          f"both next hops resolved within 10 s of the peer getting its addresses ({c.get('next_hops_resolved')})")
    check(c.get("next_hop_replies_accepted", 0) >= 2 and c.get("next_hop_replies_malformed", 0) == 0,
          f"from the peer's replies (accepted {c.get('next_hop_replies_accepted')}, "
          f"malformed {c.get('next_hop_replies_malformed')})")

    # 3. Encapsulated packets go to the peer's MAC.
    before = c.get("forwarded", 0)
    seen = run_peer(1)
    v4 = [p for p in seen if p["family"] == 4]
    v6 = [p for p in seen if p["family"] == 6]
    check(len(v4) == 3 and all(p["dst"] == peer_mac and p["src"] == DUT_MAC and p["outer_dst"] == BACKEND4
                               for p in v4),
          f"the IPv4 client's 3 packets left IP-in-IP to {BACKEND4} with destination MAC {peer_mac}: {v4}")
    check(len(v6) == 3 and all(p["dst"] == peer_mac and p["src"] == DUT_MAC and p["outer_dst"] == BACKEND6
                               for p in v6),
          f"the IPv6 client's 3 packets left IPv6-in-IPv6 to {BACKEND6} with destination MAC {peer_mac}: {v6}")
    c = counters()
    check(c.get("forwarded", 0) - before == 6, f"6 more forwarded ({c.get('forwarded', 0) - before})")
finally:
    if dut is not None:
        dut.terminate()
        try:
            dut.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dut.kill()
            dut.wait()
    cleanup()

try:
    stats = json.load(open(f"{work}/stats.json"))
    hops = {h["address"]: h for h in stats.get("next_hops", [])}
    check(set(hops) == {"192.0.2.1", "2001:db8:aa::1"} and all(h["resolved"] and h["mac"] == peer_mac
                                                                for h in hops.values()),
          f"the exit report names both next hops, resolved to {peer_mac}: {list(hops.values())}")
except (OSError, json.JSONDecodeError, NameError) as e:
    check(False, f"the exit report ({e})")
if failed:
    print(open(f"{work}/jitlb.log").read())
shutil.rmtree(work, ignore_errors=True)
print(f"FAIL: {len(failed)} checks failed" if failed else "PASS")
sys.exit(1 if failed else 0)
