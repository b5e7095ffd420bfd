#!/usr/bin/python3
"""An independent model of backend choice: the flow hash and the Maglev table
(NSDI 2016, section 3.4, with weights by credit) written again in Python from
their descriptions in common/flow_hash.h and common/maglev.h, then compared
with what the C++ code (tests/tools/maglev_tool) builds and picks: the whole
table for several backend sets, and the backend of thousands of flows.

usage: maglev_model.py MAGLEV_TOOL
"""
import ipaddress
import random
import subprocess
import sys

M64 = (1 << 64) - 1
K_PI, K_E, K_PHI = 0x243F6A8885A308D3, 0xB7E151628AED2A6B, 0x9E3779B97F4A7C15
K_SQRT3, K_SQRT5 = 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B
OFFSET_SEED, SKIP_SEED = 0x6D61676C65760001, 0x6D61676C65760002


def mix(a, b):
    p = (a & M64) * (b & M64)
    return (p & M64) ^ (p >> 64)


def finish(h):
    return mix(h ^ K_SQRT3, K_SQRT5)


def le64(b, off=0):
    return int.from_bytes(b[off:off + 8], "little")


def flow_hash(src, dst, sport, dport, proto, seed):
    """src/dst: ipaddress objects of one family."""
    version = src.version
    tail = sport | (dport << 16) | (proto << 32) | (version << 40)
    if version == 4:
        addresses = int.from_bytes(src.packed, "little") | (int.from_bytes(dst.packed, "little") << 32)
        return finish(mix(addresses ^ seed ^ K_PI, tail ^ seed ^ K_E))
    s, d = src.packed, dst.packed
    src_mixed = mix(le64(s) ^ seed ^ K_PI, le64(s, 8) ^ K_E)
    dst_mixed = mix(le64(d) ^ seed ^ K_PHI, le64(d, 8) ^ K_SQRT3)
    return finish(mix(src_mixed ^ tail ^ K_SQRT5, dst_mixed ^ K_PI))


def hash_bytes(b, seed):
    h = seed ^ K_PHI
    i = 0
    while len(b) - i >= 16:
        h = mix(le64(b, i) ^ h ^ K_PI, le64(b, i + 8) ^ K_E)
        i += 16
    last = b[i:] + bytes(16 - (len(b) - i))
    h = mix(le64(last) ^ h ^ K_SQRT3, le64(last, 8) ^ K_SQRT5)
    return finish(h ^ len(b))


def maglev_table(backends, m):
    """backends: list of (id, weight) in the caller's order; entries are indices into it."""
    order = sorted(range(len(backends)), key=lambda i: backends[i][0].encode())
    pos = {i: hash_bytes(backends[i][0].encode(), OFFSET_SEED) % m for i in order}
    skip = {i: hash_bytes(backends[i][0].encode(), SKIP_SEED) % (m - 1) + 1 for i in order}
    credit = {i: 0 for i in order}
    max_weight = max(w for _, w in backends)
    table = [-1] * m
    filled = 0
    while True:
        for i in order:
            credit[i] += backends[i][1]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            p = pos[i]
            while table[p] != -1:
                p = (p + skip[i]) % m
            table[p] = i
            pos[i] = (p + skip[i]) % m
            filled += 1
            if filled == m:
                return table


def lookup(table, h):
    return table[(h * len(table)) >> 64]


def main():
    tool = sys.argv[1]
    rng = random.Random(1)
    cases = [
        (251, [("b0", 1)]),
        (1009, [(f"backend-{i}", 1) for i in range(5)]),
        (1009, [("10.0.0.3", 1), ("10.0.0.1", 3), ("10.0.0.2", 2)]),
        (65537, [(f"be{i:02d}", 1 + i % 4) for i in range(10)]),
        (65537, [(f"2001:db8::{i:x}", 1) for i in range(7, 0, -1)]),
    ]
    bad = 0
    for m, backends in cases:
        seed = rng.getrandbits(64)
        flows = []
        for _ in range(2000):
            if rng.random() < 0.5:
                src = ipaddress.IPv4Address(rng.getrandbits(32))
                dst = ipaddress.IPv4Address("203.0.113.10")
            else:
                src = ipaddress.IPv6Address(rng.getrandbits(128))
                dst = ipaddress.IPv6Address("2001:db8:1::10")
            flows.append((src, dst, rng.randint(1, 65535), rng.choice([80, 443]), rng.choice([6, 17])))
        stdin = "".join(f"{s} {d} {sp} {dp} {p}\n" for s, d, sp, dp, p in flows)
        args = [tool, str(m), hex(seed)] + [f"{i}={w}" for i, w in backends]
        out = subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout.split("\n")
        cpp_table = [int(x) for x in out[0].split()[1:]]
        model = maglev_table(backends, m)
        diff = sum(1 for a, b in zip(cpp_table, model) if a != b) + abs(len(cpp_table) - len(model))
        wrong_hash = wrong_pick = 0
        for flow, line in zip(flows, out[1:]):
            h_cpp, pick = line.split()
            h = flow_hash(*flow, seed)
            wrong_hash += int(h_cpp, 16) != h
            wrong_pick += int(pick) != lookup(model, h)
        status = "ok" if diff == wrong_hash == wrong_pick == 0 else "MISMATCH"
        print(f"M={m} N={len(backends)}: table slots differing {diff}, flow hashes differing "
              f"{wrong_hash}/{len(flows)}, backend choices differing {wrong_pick}/{len(flows)}: {status}")
        bad += status != "ok"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
