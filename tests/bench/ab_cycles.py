#!/usr/bin/python3
"""A/B of saturated busy cycles per packet over the bench's memif link: testpmd macswap
and one or more jitlb builds, in alternating rounds within one run, so that all of them
see the same machine (on a VM, testpmd alone moves by 2x between minutes).

usage: tests/bench/ab_cycles.py ROUNDS NAME=BUILD_DIR[:EXTRA.toml] ...
  The first BUILD_DIR also provides jitlb-pktgen and jitlb_stage; the name 'testpmd'
  means dpdk-testpmd --forward-mode=macswap (its BUILD_DIR is then only for the tools).
  EXTRA.toml is appended to that build's jitlb.toml (e.g. a [main] section).
  Prints each name's median, minimum and every round's figure.

Example: tests/bench/ab_cycles.py 4 testpmd=build/release old=/tmp/old new=build/release
Needs root and hugepages, like scripts/bench (whose Session and traffic it uses)."""
import copy
import shutil
import statistics
import sys
import tempfile
from importlib.machinery import SourceFileLoader
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
B = SourceFileLoader("bench", str(ROOT / "scripts" / "bench")).load_module()


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    rounds = int(sys.argv[1])
    builds, extra = [], {}
    for a in sys.argv[2:]:
        name, d = a.split("=", 1)
        if ":" in d:
            d, f = d.split(":", 1)
            extra[name] = Path(f).read_text()
        builds.append((name, Path(d)))
    original_write = Path.write_text
    current = [None]

    def write_text(self, text, *args, **kwargs):
        if self.name == "jitlb.toml" and current[0] in extra:
            text += "\n" + extra[current[0]]
        return original_write(self, text, *args, **kwargs)

    Path.write_text = write_text
    B.ensure_hugepages()
    tmp = tempfile.mkdtemp(prefix="ab-cycles-")
    base = B.Tools(builds[0][1], tmp)
    tools = {}
    for name, d in builds:
        t = copy.copy(base)
        t.jitlb = d / "lb" / "jitlb"
        tools[name] = t
    figures = {}
    try:
        for r in range(rounds):
            for name, _ in builds:
                current[0] = name
                dut = ("testpmd", "macswap") if name == "testpmd" else ("jitlb", {"grants": 1000, "flows": 10000})
                _, d, _ = B.Session(tools[name], dut,
                                    B.traffic(dut[0], 1000, 10) + ["--rate", "max", "--duration-s", "3", "--quiet",
                                                                   "--warmup-s", "1"], f"ab-{name}-{r}").run()
                figures.setdefault(name, []).append(d.get("cycles_per_packet") or 0.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, v in figures.items():
        print(f"{name}: median {statistics.median(v):.1f}, min {min(v):.1f}, rounds {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
