#!/usr/bin/python3
"""Checks jitlb_stage (tests/tools/jitlb_stage.cc) from the outside, without jitlb.

    test_jitlb_stage.py PATH_TO_JITLB_STAGE

keygen and sign make a key and a grant, whose record is decoded here field by
field (docs/grants.md); push writes a script into a cmd file, whose command ring
is decoded here record by record as a second, independent reading of
docs/shared-region.md; invalid scripts are refused whole, naming the entry and
field, and leave the file as it was; a full ring is reported; events and state
refuse a missing state file. Standard library only.
"""

import base64
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile

TOOL = None
FAILURES = []

CMD_MAGIC = b"JITLBCMD"
SLOT_BYTES = 256
PAD_TYPE = 0xFFFF
TYPES = {
    "service_set": 0x0003,
    "backend_set": 0x0004,
    "grant_push": 0x0001,
    "revoke": 0x0002,
    "key_reload": 0x0005,
    "service_delete": 0x0006,
}
NOW_MS = 1_790_000_000_000


def run(*args, stdin=None):
    return subprocess.run([TOOL, *args], input=stdin, capture_output=True, text=True, timeout=60)


def check(condition, what, result=None):
    if condition:
        return
    detail = ""
    if result is not None:
        detail = f"\n    exit {result.returncode}\n    stdout: {result.stdout!r}\n    stderr: {result.stderr!r}"
    FAILURES.append(what + detail)
    print(f"FAIL: {what}{detail}", file=sys.stderr)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key_b64):
    public = b64url_decode(public_key_b64)
    return hashlib.blake2b(b"jitlb-issuer-key-id-v1" + public, digest_size=32).digest()[:8]


# --- the cmd file, read independently ---------------------------------------------------------


def u8(b, o):
    return b[o], o + 1


def u16(b, o):
    return struct.unpack_from("<H", b, o)[0], o + 2


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0], o + 4


def u64(b, o):
    return struct.unpack_from("<Q", b, o)[0], o + 8


def str8(b, o):
    n, o = u8(b, o)
    return b[o : o + n].decode("ascii"), o + n


def addr(b, o):
    family, o = u8(b, o)
    raw = b[o : o + 16]
    o += 16
    if family == 4:
        assert raw[4:] == bytes(12), "IPv4 padding"
        return "%d.%d.%d.%d" % tuple(raw[:4]), o
    assert family == 6, f"family {family}"
    import ipaddress

    return str(ipaddress.IPv6Address(raw)), o


def decode_payload(kind, p):
    """The payload as the script would have said it (docs/shared-region.md, Messages)."""
    o = 0
    out = {}
    if kind == "service_set":
        out["name"], o = str8(p, o)
        mode, o = u8(p, o)
        out["mode"] = {1: "ipip", 2: "gue", 3: "l2dsr"}[mode]
        out["gue_port"], o = u16(p, o)
        out["table_size"], o = u32(p, o)
        flags, o = u32(p, o)
        out["disabled"] = bool(flags & 1)
        count, o = u8(p, o)
        out["vips"] = []
        for _ in range(count):
            vip = {}
            vip["address"], o = addr(p, o)
            vip["port"], o = u16(p, o)
            proto, o = u8(p, o)
            vip["protocol"] = {6: "tcp", 17: "udp"}[proto]
            out["vips"].append(vip)
    elif kind == "backend_set":
        out["service"], o = str8(p, o)
        count, o = u16(p, o)
        out["backends"] = []
        for _ in range(count):
            b = {}
            b["id"], o = str8(p, o)
            b["address"], o = addr(p, o)
            b["weight"], o = u32(p, o)
            b["mac"] = ":".join("%02x" % x for x in p[o : o + 6])
            o += 6
            out["backends"].append(b)
    elif kind == "grant_push":
        out["push_sequence"], o = u64(p, o)
        n, o = u16(p, o)
        out["grant"] = p[o : o + n]
        o += n
    elif kind == "revoke":
        out["grant_id"] = p[o : o + 16].hex()
        o += 16
        out["not_after_ms"], o = u64(p, o)
        out["reason"], o = u16(p, o)
    elif kind == "service_delete":
        out["name"], o = str8(p, o)
    assert o == len(p), f"{kind}: {len(p) - o} bytes left over"
    return out


def read_cmd_ring(path):
    """(epoch, producer index, [(sequence, type name, payload dict)]) from slot 0 of the epoch."""
    b = file_bytes(path)
    assert b[:8] == CMD_MAGIC, f"magic {b[:8]!r}"
    slots = struct.unpack_from("<I", b, 256)[0]
    assert struct.unpack_from("<I", b, 260)[0] == SLOT_BYTES
    sections = [struct.unpack_from("<QQ", b, 64 + 16 * i) for i in range(3)]
    producer_at, slots_at = sections[0][0], sections[2][0]
    index, epoch = struct.unpack_from("<QQ", b, producer_at)
    names = {v: k for k, v in TYPES.items()}
    records = []
    pos = 0
    while pos < index:
        at = slots_at + (pos % slots) * SLOT_BYTES
        rtype, version, length, sequence = struct.unpack_from("<HHIQ", b, at)
        assert sequence == pos, f"record at {pos} says sequence {sequence}"
        if rtype == PAD_TYPE:
            pos += slots - pos % slots
            continue
        assert version == 1
        kind = names[rtype]
        records.append((sequence, kind, decode_payload(kind, b[at + 16 : at + 16 + length])))
        pos += (16 + length + SLOT_BYTES - 1) // SLOT_BYTES
    assert pos == index, "records run past the producer index"
    return epoch, index, records


# --- the tests ----------------------------------------------------------------------------------


def test_help():
    for sub in ["keygen", "sign", "push", "events", "state"]:
        r = run(sub, "--help")
        check(r.returncode == 0 and "Usage" in r.stdout, f"{sub} --help", r)
    r = run("launch")
    check(r.returncode == 2, "an unknown subcommand is a usage error (2)", r)


def test_keygen(tmp):
    secret, public = os.path.join(tmp, "issuer.sec"), os.path.join(tmp, "trusted.pub")
    r = run("keygen", "--secret", secret, "--public", public, "--comment", "stage test")
    check(r.returncode == 0, "keygen exits 0", r)
    out = json.loads(r.stdout)
    check(stat.S_IMODE(os.stat(secret).st_mode) == 0o600, "the secret key file is 0600")
    check(file_bytes(secret).startswith(b"jitlb-issuer-secret-v1 "), "secret key file format")
    lines = file_bytes(public).decode().splitlines()
    check(lines == [f"jitlb-issuer-public-v1 {out['public_key']} stage test"], f"public line: {lines}")
    check(key_id(out["public_key"]).hex() == out["key_id"], "the key id is BLAKE2b of the public key")

    r = run("keygen", "--secret", os.path.join(tmp, "second.sec"), "--public", public)
    check(r.returncode == 0, "a second keygen appends", r)
    check(len(file_bytes(public).decode().splitlines()) == 2, "two public lines")

    before = file_bytes(secret)
    r = run("keygen", "--secret", secret, "--public", public)
    check(r.returncode == 1 and "exists" in r.stderr, "keygen never overwrites a secret key", r)
    check(file_bytes(secret) == before, "the secret key is unchanged")
    check(len(file_bytes(public).decode().splitlines()) == 2, "nothing appended after a refusal")
    return secret, out["key_id"]


def test_sign(secret, issuer_id):
    grant_id = "00112233445566778899aabbccddeeff"
    r = run("sign", "--secret", secret, "--source", "198.51.100.0/24", "--service", "web",
            "--subject", "alice", "--now-ms", str(NOW_MS), "--start-in-s", "-10",
            "--duration-s", "60", "--grant-id", grant_id)
    check(r.returncode == 0, "sign exits 0", r)
    text = r.stdout.rstrip("\n")
    check(text.startswith("jitlb-grant1:"), f"text prefix: {text[:20]!r}")
    check(len(text) == 323, f"text length {len(text)}")
    signed = b64url_decode(text[len("jitlb-grant1:"):])
    check(len(signed) == 232, "232 signed bytes")
    rec = signed[:168]
    check(rec[0:5] == bytes([1, 4, 24, 3, 5]), f"version, family, prefix, lengths: {rec[0:5].hex()}")
    check(rec[16:24].hex() == issuer_id, "issuer key id")
    check(rec[24:40].hex() == grant_id, "grant id")
    nb, na = struct.unpack_from("<qq", rec, 40)
    check((nb, na) == (NOW_MS - 10_000, NOW_MS + 50_000), f"times {nb} {na}")
    check(rec[56:60] == bytes([198, 51, 100, 0]) and rec[60:72] == bytes(12), "source address")
    check(rec[72:104] == b"web".ljust(32, b"\0"), "service")
    check(rec[104:168] == b"alice".ljust(64, b"\0"), "subject")

    r = run("sign", "--secret", secret, "--source", "198.51.100.1/24", "--service", "web",
            "--duration-s", "60")
    check(r.returncode == 2 and "198.51.100.1/24" in r.stderr
          and "bits set beyond the prefix length" in r.stderr and "198.51.100.0/24" in r.stderr,
          "sign refuses a prefix with host bits and names the network", r)
    check(r.stdout == "", "nothing on stdout after a refusal")
    r = run("sign", "--secret", secret, "--source", "198.51.100.0/24", "--service", "web")
    check(r.returncode == 2 and "--duration-s" in r.stderr, "sign needs an end", r)
    return text


def valid_script(grant_text):
    return [
        {"type": "service_set", "name": "web", "mode": "ipip", "table_size": 65537,
         "disabled": False, "vips": [{"address": "192.0.2.1", "port": 80, "protocol": "tcp"}]},
        {"type": "service_set", "name": "dns", "mode": "gue", "gue_port": 6080, "disabled": True,
         "vips": [{"address": "2001:db8::53", "port": 53, "protocol": "udp"},
                  {"address": "192.0.2.53", "port": 53, "protocol": "tcp"}]},
        {"type": "backend_set", "service": "web",
         "backends": [{"id": "b1", "address": "10.0.0.1", "weight": 1, "mac": "02:00:00:00:00:01"},
                      {"id": "b2", "address": "2001:db8::2", "weight": 3}]},
        {"type": "grant", "text": grant_text},
        {"type": "grant", "raw_hex": "01ff00"},
        {"type": "revoke", "grant_id": "00112233445566778899aabbccddeeff", "not_after_ms": 123,
         "reason": "operator"},
        {"type": "key_reload"},
        {"type": "service_delete", "name": "web"},
    ]


def check_ring_holds(path, script, pushed_lines, grant_text):
    _, _, records = read_cmd_ring(path)
    kinds = ["grant_push" if e["type"] == "grant" else e["type"] for e in script]
    check([k for _, k, _ in records] == kinds, f"ring holds the script in order: {records}")
    check([s for s, _, _ in records] == [line["sequence"] for line in pushed_lines],
          "the printed sequences are the records' own")
    by_kind = {}
    for (_, kind, payload), entry in zip(records, script):
        by_kind.setdefault(kind, []).append((payload, entry))
    web, dns = by_kind["service_set"]
    check(web[0] == {"name": "web", "mode": "ipip", "gue_port": 0, "table_size": 65537,
                     "disabled": False, "vips": web[1]["vips"]}, f"service_set web: {web[0]}")
    check(dns[0]["gue_port"] == 6080 and dns[0]["disabled"] and dns[0]["table_size"] == 65537
          and dns[0]["vips"] == dns[1]["vips"], f"service_set dns: {dns[0]}")
    backends = by_kind["backend_set"][0][0]["backends"]
    check(backends == [{"id": "b1", "address": "10.0.0.1", "weight": 1, "mac": "02:00:00:00:00:01"},
                       {"id": "b2", "address": "2001:db8::2", "weight": 3, "mac": "00:00:00:00:00:00"}],
          f"backend_set: {backends}")
    grants = by_kind["grant_push"]
    check(grants[0][0]["grant"] == b64url_decode(grant_text[len("jitlb-grant1:"):]),
          "a text grant is pushed as its 232 signed bytes")
    check(grants[1][0]["grant"] == bytes([1, 0xFF, 0]), "raw_hex is pushed as it is")
    check(by_kind["revoke"][0][0] == {"grant_id": "00112233445566778899aabbccddeeff",
                                      "not_after_ms": 123, "reason": 1}, "revoke")
    check(by_kind["service_delete"][0][0] == {"name": "web"}, "service_delete")


def write_json(tmp, name, value):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def test_push(tmp, grant_text):
    cmd = os.path.join(tmp, "jitlb-t1.cmd")
    script = valid_script(grant_text)
    good = write_json(tmp, "good.json", script)

    r = run("push", "--cmd-file", cmd, "--script", good)
    check(r.returncode == 2 and "--detached" in r.stderr and not os.path.exists(cmd),
          "push without a state file asks for one or for --detached, and creates nothing", r)

    r = run("push", "--cmd-file", cmd, "--script", good, "--detached")
    check(r.returncode == 0, "push of a valid script", r)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    check(len(lines) == len(script), "one line per command")
    check(stat.S_IMODE(os.stat(cmd).st_mode) == 0o640, "the cmd file is 0640")
    check_ring_holds(cmd, script, lines, grant_text)

    bad = list(script)
    bad[1] = dict(script[1], vips=[{"address": "192.0.2.1", "port": 70000, "protocol": "tcp"}])
    bad[4] = {"type": "grant", "text": grant_text[:13 + 308]}  # 231 bytes: truncated
    bad[6] = {"type": "key_reload", "colour": "red"}
    before = file_bytes(cmd)
    r = run("push", "--cmd-file", cmd, "--script", write_json(tmp, "bad.json", bad), "--detached")
    check(r.returncode in (1, 2), "push of an invalid script fails", r)
    check("script[1].vips[0].port" in r.stderr and "70000" in r.stderr,
          "the error names the entry, the field and the value", r)
    check("script[4].text" in r.stderr and "truncated" in r.stderr,
          "a text that is not a grant is named, with the format error", r)
    check("script[6].colour" in r.stderr, "an unknown field is named", r)
    check("nothing pushed" in r.stderr and r.stdout == "", "nothing pushed", r)
    check(file_bytes(cmd) == before, "the cmd file is unchanged after an invalid script")

    r = run("push", "--cmd-file", cmd, "--script", "-", "--detached", stdin="[1,")
    check(r.returncode == 1 and "not JSON" in r.stderr, "a script that is not JSON", r)
    check(file_bytes(cmd) == before, "the cmd file is unchanged after a broken script")

    r = run("push", "--cmd-file", cmd, "--script", good, "--detached")
    check(r.returncode == 0, "a second valid push still works", r)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    check_ring_holds(cmd, script, lines, grant_text)

    not_cmd = os.path.join(tmp, "notes.txt")
    with open(not_cmd, "w") as f:
        f.write("keep me\n")
    r = run("push", "--cmd-file", not_cmd, "--script", good, "--detached")
    check(r.returncode == 1 and "not a cmd file" in r.stderr, "push refuses a file that is not a cmd file", r)
    check(file_bytes(not_cmd) == b"keep me\n", "and leaves it alone")
    return cmd


def test_full_ring(tmp):
    cmd = os.path.join(tmp, "jitlb-t2.cmd")
    many = [{"type": "service_set", "name": f"s{i}", "mode": "ipip",
             "vips": [{"address": "192.0.2.1", "port": 80, "protocol": "tcp"}]} for i in range(100)]
    r = run("push", "--cmd-file", cmd, "--cmd-slots", "64", "--script",
            write_json(tmp, "many.json", many), "--detached")
    check(r.returncode == 1 and "command ring full" in r.stderr and "script[64]" in r.stderr,
          "a full ring is reported with the entry that did not fit", r)
    check(len(r.stdout.splitlines()) == 64, "the 64 that fitted were pushed")
    r = run("push", "--cmd-file", cmd, "--cmd-slots", "100", "--script",
            os.path.join(tmp, "many.json"), "--detached")
    check(r.returncode == 2 and "power of two" in r.stderr, "--cmd-slots must be a power of two", r)


def test_missing_state_file(tmp, cmd):
    owner = str(os.getuid())
    before = file_bytes(cmd)
    r = run("events", "--dir", tmp, "--instance", "t1", "--state-owner", owner)
    state = os.path.join(tmp, "jitlb-t1.state")
    check(r.returncode == 1 and state in r.stderr and "no such file" in r.stderr,
          "events names the missing state file", r)
    check(file_bytes(cmd) == before, "events left the cmd file alone")
    r = run("events", "--cmd-file", cmd, "--state-file", state, "--state-owner", owner,
            "--until", "service_applied:2", "--wait-ms", "50")
    check(r.returncode == 1 and "waited 50 ms" in r.stderr, "events waits for the state file", r)
    r = run("events", "--dir", tmp, "--instance", "t1", "--state-owner", owner, "--until", "nonsense")
    check(r.returncode == 2 and "grant_activated" in r.stderr, "--until names the event types", r)
    r = run("state", "--state-file", state, "--state-owner", owner)
    check(r.returncode == 1 and "no such file" in r.stderr, "state names the missing state file", r)
    r = run("state", "--state-file", cmd, "--state-owner", owner)
    check(r.returncode == 1 and "not a state file" in r.stderr, "state refuses a cmd file", r)
    r = run("push", "--dir", tmp, "--instance", "t1", "--state-owner", owner, "--script",
            os.path.join(tmp, "good.json"), "--wait-ms", "50")
    check(r.returncode == 1 and state in r.stderr, "push waits for the state file, then says so", r)


def main():
    global TOOL
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    TOOL = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="jitlb-stage-") as tmp:
        test_help()
        secret, issuer_id = test_keygen(tmp)
        grant_text = test_sign(secret, issuer_id)
        cmd = test_push(tmp, grant_text)
        test_full_ring(tmp)
        test_missing_state_file(tmp, cmd)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("jitlb_stage: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
