#!/usr/bin/env python3
"""Generate Python modules and .pyi stubs from proto/cvlan/v1/*.proto into src/cvlan/wire/pb/.

    scripts/gen_proto.py           regenerate in place
    scripts/gen_proto.py --check   regenerate into a temporary directory and fail on any drift

Uses grpcio-tools' bundled protoc and the mypy-protobuf plugin (protoc-gen-mypy)."""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "cvlan" / "v1"
OUT = ROOT / "src" / "cvlan" / "wire" / "pb"
INIT = '"""Generated protobuf modules (do not edit; run scripts/gen_proto.py)."""\n'


def generate(dest: Path) -> list[str]:
    """Run protoc into a scratch dir, then flatten cvlan/v1/*_pb2.py(i) into dest. Returns file names."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit("gen_proto: no .proto files in proto/cvlan/v1")
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit(
            "gen_proto: protoc-gen-mypy not found next to the interpreter (pip install mypy-protobuf)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--mypy_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"gen_proto: protoc failed:\n{done.stderr.strip()}")
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for f in sorted((Path(tmp) / "cvlan" / "v1").iterdir()):
            if not f.name.endswith(("_pb2.py", "_pb2.pyi")):
                continue
            text = re.sub(r"^from cvlan\.v1 import", "from cvlan.wire.pb import", f.read_text(), flags=re.M)
            text = re.sub(r"^import cvlan\.v1\.(\w+)$", r"import cvlan.wire.pb.\1", text, flags=re.M)
            (dest / f.name).write_text(text)
            names.append(f.name)
    (dest / "__init__.py").write_text(INIT)
    return ["__init__.py", *names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--check", action="store_true", help="fail if the committed code differs from the .proto files"
    )
    args = ap.parse_args()
    if not args.check:
        names = generate(OUT)
        for stale in OUT.glob("*_pb2.py*"):
            if stale.name not in names:
                stale.unlink()
        print(f"gen_proto: wrote {len(names)} files to {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        names = generate(Path(tmp))
        have = sorted(p.name for p in OUT.glob("*") if p.is_file() and p.suffix in (".py", ".pyi"))
        drift = [
            n
            for n in names
            if not (OUT / n).exists() or not filecmp.cmp(Path(tmp) / n, OUT / n, shallow=False)
        ]
        drift += [n for n in have if n not in names]
    if drift:
        print(
            f"gen_proto: generated code is out of date: {', '.join(drift)}; run scripts/gen_proto.py",
            file=sys.stderr,
        )
        return 1
    print("gen_proto: generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
