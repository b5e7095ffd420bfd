#!/usr/bin/python3
"""Hostile packets and hostile grants through the real jitlb (the cases: hostile_cases.py).

The machinery is dataplane_golden.py's — jitlb on a net_pcap port, jitlb_stage in
place of jitd, output frames matched to cases in input order, every counter of
--stats-json equal to the table's sums — under its own instance and EAL file
prefix ("hostile"), work directory, state file, issuer keys and grants. Two runs
share the state file:

  live  jitlb up, frames through a FIFO in three phases (hostile_cases.live_cases).
        Push 1: the services and the grants of push 1, each answered GrantActivated
        or GrantRejected with its reason; phase 1. Push 2: a revocation, and a key
        reload after the issuer "rotated" left the public key file: GrantRevoked
        (operator; issuer_key_removed) and KeysReloaded; phase 2 (the ended grants'
        tracked flows get resets, new flows nothing). Push 3: replays and reused
        ids, refused; the short grant's GrantExpired; push 4: its replay, refused as
        expired; phase 3.
  main  jitlb restarted (services pushed again while it is down): every packet case,
        and the sources of the grants of category 7.

usage: hostile_golden.py JITLB JITLB_STAGE [--selfcheck] [--keep DIR] [--verbose]
Exit 0: pass; 1: a case failed; 77: jitlb cannot run here (not root, or no DPDK EAL).
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataplane_golden as dg  # noqa: E402
import hostile_cases as hc  # noqa: E402

dg.INSTANCE = "hostile"  # the state file's name and the EAL's --file-prefix (hostile<pid>)
BURST = dg.BURST


# --- grants ------------------------------------------------------------------------------------


def keygen(stage, name, public):
    return json.loads(stage.run("keygen", "--secret", stage.tmp / f"{name}.secret", "--public", public,
                                "--comment", f"hostile {name}").stdout)


def sign_grants(stage, names, now_ms, signed, key_ids):
    """Signs the named grants of HOSTILE_GRANTS (in table order) into `signed` (name -> the
    232 bytes pushed), then applies their tampering; replays take the other grant's bytes."""
    secrets = {"main": stage.secret, "rotated": stage.tmp / "rotated.secret",
               "untrusted": stage.tmp / "untrusted.secret"}
    for g in hc.HOSTILE_GRANTS:
        if g.name not in names:
            continue
        if g.replay_of:
            signed[g.name] = signed[g.replay_of]
            continue
        args = ["sign", "--secret", secrets[g.issuer], "--source", g.source, "--service", g.service,
                "--subject", f"hostile {g.name}", "--not-before-ms", now_ms + g.not_before_s * 1000,
                "--not-after-ms", now_ms + g.not_after_s * 1000]
        if g.id_of:
            args += ["--grant-id", grant_id(signed, g.id_of)]
        raw = bytearray(dg.signed_bytes(stage.run(*args).stdout.strip()))
        if g.tamper:
            g.tamper(raw, {"key_ids": key_ids, "signed": signed})
        signed[g.name] = bytes(raw)


def grant_id(signed, name):
    return signed[name][hc.REC_ID:hc.REC_ID + 16].hex()


def pushes(signed, push):
    grants = [g for g in hc.HOSTILE_GRANTS if g.push == push]
    # Refusals first: verification answers in backlog order, so once the last
    # GrantActivated is read, every GrantRejected before it has been too.
    grants.sort(key=lambda g: g.expect is None)
    script = [{"type": "grant", "raw_hex": signed[g.name].hex()} for g in grants]
    want, reasons = Counter(), {}
    for g in grants:
        gid = grant_id(signed, g.name)
        want[("grant_rejected" if g.expect else "grant_activated", gid)] += 1
        if g.expect:
            reasons[gid] = g.expect
    return script, want, reasons


# --- the running jitlb -----------------------------------------------------------------------------


def telemetry_stats():
    """/jitlb/stats from jitlb's DPDK telemetry socket (what dpdk-telemetry.py reads)."""
    path = f"/var/run/dpdk/{dg.file_prefix()}/dpdk_telemetry.v2"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect(path)
        info = json.loads(s.recv(4096))
        s.send(b"/jitlb/stats")
        return json.loads(s.recv(info.get("max_output_len", 16384)))["/jitlb/stats"]


def wait_rx(report, phase, count, timeout=15):
    """Until jitlb has received `count` frames: a phase is done before the next push."""
    deadline = time.monotonic() + timeout
    got, error = None, ""
    while time.monotonic() < deadline:
        try:
            got = telemetry_stats().get("rx_packets")
        except (OSError, ValueError, KeyError) as e:
            error = f"    telemetry: {e}"
        if got is not None and got >= count:
            return True
        time.sleep(0.02)
    return report.line(False, f"[live] phase {phase}: jitlb received {got} of {count} frames", error)


def live_run(report, stage, writer, plan, signed, key_ids, public):
    phases = {p: [bytes(f) for c in plan.cases if c.phase == p for f in c.inputs] for p in (1, 2, 3)}
    assert all(len(f) == 2 * BURST for f in phases.values()), "a phase: one burst to refresh, one of cases"
    sent = 0

    def phase(p):
        nonlocal sent
        writer.write(dg.pcap_records(phases[p]))
        sent += len(phases[p])
        return wait_rx(report, p, sent)

    # Push 1, with the services. "short" is signed last, its SHORT_S seconds counted from here.
    t0 = int(time.time() * 1000)
    sign_grants(stage, {"short", "short-replayed-after-expiry"}, t0, signed, key_ids)
    script, want, reasons = pushes(signed, 1)
    stage.push(dg.service_script() + script)
    n_activated = sum(n for (kind, _), n in want.items() if kind == "grant_activated")
    events, r = stage.events(until=f"grant_activated:{n_activated}", wait_ms=10000)
    ok = dg.check_events(report, "push 1: services, grants activated and refused, each for its reason", events, r,
                         {**{("service_applied", s.name): 2 for s in dg.dc.SERVICES}, **want}, reasons)
    ok &= phase(1)
    short_end = t0 + hc.SHORT_S * 1000
    ok &= report.line(time.time() * 1000 < short_end - 300,
                      f"[live] phase 1 was read {short_end - time.time() * 1000:.0f} ms before 'short' ended")

    # Push 2: a revocation, and the issuer "rotated" removed from the key file, then reloaded.
    revoked, rotated = grant_id(signed, "revoked"), grant_id(signed, "rotated-key")
    lines = public.read_text().splitlines(keepends=True)
    public.write_text("".join(line for line in lines if key_ids["rotated_public"] not in line))
    stage.push([{"type": "revoke", "grant_id": revoked, "not_after_ms": t0 + hc.HOUR * 1000, "reason": "operator"},
                {"type": "key_reload"}])
    events, r = stage.events(until="keys_reloaded:1", wait_ms=10000)
    ok &= dg.check_events(report, "push 2: a revocation; a key reload ends the removed issuer's grant", events, r,
                          {("grant_revoked", revoked): 1, ("grant_revoked", rotated): 1, ("keys_reloaded", None): 1},
                          {revoked: "operator", rotated: "issuer_key_removed"})
    reload = [e for e in events if e["type"] == "keys_reloaded"]
    ok &= report.line(len(reload) == 1 and reload[0]["key_count"] == 1 and reload[0]["grants_ended"] == 1,
                      "[live] KeysReloaded: 1 key left, 1 grant ended", f"    {reload}")
    ok &= phase(2)

    # Push 3: replays and reused ids; then "short" ends; push 4: its replay.
    script, want, reasons = pushes(signed, 3)
    stage.push(script)
    events, r = stage.events(until=f"grant_rejected:{sum(want.values())}", wait_ms=10000)
    ok &= dg.check_events(report, "push 3: a revoked grant, its id, a removed issuer's grants, a live id, "
                          "each refused", events, r, want, reasons)
    short = grant_id(signed, "short")
    events, r = stage.events(until="grant_expired:1", wait_ms=max(0, short_end - int(time.time() * 1000)) + 5000)
    ok &= dg.check_events(report, "'short' ended: GrantExpired", events, r, {("grant_expired", short): 1})
    script, want, reasons = pushes(signed, 4)
    stage.push(script)
    events, r = stage.events(until=f"grant_rejected:{sum(want.values())}", wait_ms=10000)
    ok &= dg.check_events(report, "push 4: 'short' replayed after its end, refused", events, r, want, reasons)
    ok &= phase(3)
    return ok


def run_test(args):
    if os.geteuid() != 0:
        print("SKIP: jitlb needs root (DPDK EAL, hugepages)")
        return dg.SKIP
    for exe in (args.jitlb, args.stage):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not an executable")
            return 1
    cases = hc.cases()
    if not selfcheck(cases):
        return 1

    tmp = args.keep or tempfile.mkdtemp(prefix="hostile_golden.")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    print(f"work dir: {tmp}")
    report = dg.Report()
    started = time.monotonic()
    stage = dg.Stage(args.stage, tmp, args.verbose)
    public = Path(stage.public)
    keys = {"main": stage.keygen(), "rotated": keygen(stage, "rotated", public),
            "untrusted": keygen(stage, "untrusted", Path(tmp) / "untrusted.pub")}  # a file jitlb never reads
    key_ids = {name: k["key_id"] for name, k in keys.items()}
    key_ids["rotated_public"] = keys["rotated"]["public_key"]
    signed = {}
    later = {"short", "short-replayed-after-expiry"}
    sign_grants(stage, {g.name for g in hc.HOSTILE_GRANTS} - later, int(time.time() * 1000), signed, key_ids)

    plans = {name: dg.RunPlan(name, shift, exception) for name, (shift, exception) in hc.RUNS.items()}
    for case in cases:
        case.outputs = []
        plans[case.run].add(case)
    for plan in plans.values():
        plan.end_burst()

    # --- run "live" --------------------------------------------------------------------------------
    fifo = Path(tmp) / "live.fifo"
    os.mkfifo(fifo)
    live = dg.Jitlb(args.jitlb, tmp, "live", fifo, idle_ms=0)
    live.start()
    ok = False
    try:
        writer = dg.open_fifo(fifo, live)
        if writer is None:
            rc = live.wait(10)
            log = live.output()
            if "EAL init failed" in log:
                print(f"SKIP: jitlb cannot start a DPDK EAL here:\n{log[-2000:]}")
                return dg.SKIP
            print(f"FAIL: jitlb exited ({rc}) before opening its pcap port:\n{log[-3000:]}")
            return 1
        try:
            writer.write(dg.PCAP_HEADER)
            ok = live_run(report, stage, writer, plans["live"], signed, key_ids, public)
        finally:
            writer.close()
    except RuntimeError as e:  # jitlb_stage failed
        report.line(False, "[live] jitlb_stage", f"    {e}")
        return dg.finish(report, tmp, args, started)
    finally:
        live.stop()
        rc = live.wait(20)
    if rc != 0:
        report.line(False, f"[live] jitlb exited with {rc}", live.output()[-3000:])
    elif ok:
        dg.check_run(report, plans["live"], live.outputs(), live.counters())

    # --- run "main": restarted on the same state file ---------------------------------------------
    try:
        stage.push(dg.service_script())
    except RuntimeError as e:
        report.line(False, "[main] services pushed while jitlb is down", f"    {e}")
        return dg.finish(report, tmp, args, started)
    rx = Path(tmp) / "in-main.pcap"
    dg.write_pcap(rx, plans["main"].inputs)
    j = dg.Jitlb(args.jitlb, tmp, "main", rx)
    j.start()
    rc = j.wait(60)
    if args.verbose:
        print(j.output()[-3000:])
    if rc != 0:
        report.line(False, f"[main] jitlb exited with {rc}", j.output()[-3000:])
    else:
        dg.check_run(report, plans["main"], j.outputs(), j.counters())
    return dg.finish(report, tmp, args, started)


def selfcheck(cases):
    """The expected frames against scapy (dataplane_golden's check), and the rule: no row
    expects a forwarded frame for a (source, service) that no grant in force covers."""
    ok = dg.selfcheck([c for c in cases if not getattr(c, "rebuild_differs", None)])
    bad = hc.rule_violations(cases)
    for b in bad:
        print(f"SELFCHECK FAIL (the rule) {b}")
    forwarding = sum(len(c.inputs) for c in cases if isinstance(c.expect, dg.dc.Out) and
                     "forwarded" in c.expect.counters)
    print(f"selfcheck: {len(cases)} cases, {sum(len(c.inputs) for c in cases)} frames; every one of the "
          f"{forwarding} frames expected forwarded has a grant in force for its (source, service): {not bad}")
    return ok and not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jitlb")
    ap.add_argument("stage")
    ap.add_argument("--selfcheck", action="store_true", help="only check the table (expected frames, the rule)")
    ap.add_argument("--keep", help="work in this directory and keep it")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.selfcheck:
        return 0 if selfcheck(hc.cases()) else 1
    return run_test(args)


if __name__ == "__main__":
    sys.exit(main())
