"""Where a registration's controller CPU goes: a py-spy profile (`bench_registration.py --py-spy
FILE`, collapsed stacks) folded into the steps of a registration, as a markdown table.

  .venv/bin/python bench/registration/profile_table.py FILE CPU_MS_PER_REGISTRATION

Each sample is counted once, under the first step (in the order below) whose frames it contains.
Samples whose innermost frame is the event loop's own run call are its wait for I/O (uvloop's
epoll is not recognised as idle by py-spy) and are left out."""

from __future__ import annotations

import collections
import gzip
import re
import sys
from pathlib import Path

STEPS = [
    ("certificate signing (ECDSA P-256, DER, PEM)", r"issue_client|CertificateBuilder|issue_cert"),
    ("CSR parse and signature check", r"load_csr"),
    (
        "ORM flush: INSERT node, address, audit; UPDATE token, CVLAN, node",
        r"Session\._flush|Session\.flush|UOWTransaction",
    ),
    (
        "BEGIN, COMMIT, connection checkout",
        r"SessionTransaction\.commit|_connection_for_bind|AsyncSessionTransaction|_ConnectionFairy|Pool",
    ),
    (
        "SELECT/UPDATE statements: build, compile cache, execute, rows",
        r"Session\.(execute|scalar|scalars|get|refresh)|Select\.|select \(|where|with_for_update|coercions|Connection\.execute",
    ),
    (
        "registration code (token, names, IPAM, audit, ORM objects)",
        r"answer_register|Enrolment|enrol_many|create_many|register \(|consume_token|allocate_address|_unique_name|record \(",
    ),
    ("lean HTTP server and protobuf", r"lean\.py|nodeproto|_pb2|protobuf"),
    ("map invalidation and LISTEN/NOTIFY fan-out", r"Mapper\.|Fanout|_on_changed"),
    ("asyncpg protocol, event loop, other", r".*"),
]


def fold(path: Path) -> tuple[collections.Counter[str], int]:
    raw = path.read_bytes()
    data = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
    got: collections.Counter[str] = collections.Counter()
    total = 0
    for m in re.finditer(r"(.*?) (\d+)\n", data, re.S):
        stack, n = m.group(1), int(m.group(2))
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(("Runner.run (", "run (uvloop")):
            continue
        total += n
        for name, pat in STEPS:
            if re.search(pat, stack):
                got[name] += n
                break
    return got, total


def table(path: Path, cpu_ms: float) -> str:
    got, total = fold(path)
    rows = ["| step | share of samples | ms per registration |", "|---|---|---|"]
    for name, _ in STEPS:
        rows.append(f"| {name} | {100 * got[name] / total:.1f} % | {cpu_ms * got[name] / total:.2f} |")
    rows.append(f"| **total** (controller CPU per registration, from /proc) | 100 % | **{cpu_ms:.2f}** |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), float(sys.argv[2])))
