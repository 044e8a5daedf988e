#!/usr/bin/env python3
"""Vendor Yjs for the collaborative notes demo: one ES module, committed, so that ``make run``
needs no npm.

    python scripts/vendor_yjs.py            # the pinned versions below
    python scripts/vendor_yjs.py --yjs 13.6.33

In a temporary directory: ``npm install`` Yjs and esbuild (exact versions), bundle Yjs and its
dependency lib0 into a single ES module with ``esbuild --bundle --format=esm --minify``, and
write into ``src/pulsewire/web/demo/notes/vendor/``:

* ``yjs.mjs``: the bundle (``import * as Y from "./vendor/yjs.mjs"``);
* ``VERSION``: the versions, size and SHA-256 of the bundle;
* ``LICENSE``: the licenses of what is bundled (MIT).

Same versions in, same bytes out: rerunning it leaves the files unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

YJS_VERSION = "13.6.33"
ESBUILD_VERSION = "0.28.2"
ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "src" / "pulsewire" / "web" / "demo" / "notes" / "vendor"


def run(command: list[str], cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def installed_version(workdir: Path, package: str) -> str:
    manifest = workdir / "node_modules" / package / "package.json"
    return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])


def license_text(workdir: Path, package: str) -> str:
    for name in ("LICENSE", "LICENSE.md", "LICENSE.txt"):
        path = workdir / "node_modules" / package / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    raise SystemExit(f"no license file in node_modules/{package}")


def bundle(yjs: str, esbuild: str, out: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: install Node.js (only needed to re-vendor Yjs)")
    with tempfile.TemporaryDirectory(prefix="pulsewire-yjs-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_text('{"private": true}\n', encoding="utf-8")
        (work / "entry.mjs").write_text('export * from "yjs";\n', encoding="utf-8")
        run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                f"yjs@{yjs}",
                f"esbuild@{esbuild}",
            ],
            work,
        )
        versions = {name: installed_version(work, name) for name in ("yjs", "lib0")}
        banner = (
            f"/* Yjs {versions['yjs']} with lib0 {versions['lib0']} (MIT, see LICENSE), "
            "bundled by scripts/vendor_yjs.py */"
        )
        run(
            [
                str(work / "node_modules" / ".bin" / "esbuild"),
                "entry.mjs",
                "--bundle",
                "--format=esm",
                "--minify",
                "--target=es2020",
                "--legal-comments=none",
                f"--banner:js={banner}",
                "--outfile=yjs.mjs",
            ],
            work,
        )
        out.mkdir(parents=True, exist_ok=True)
        data = (work / "yjs.mjs").read_bytes()
        (out / "yjs.mjs").write_bytes(data)
        licenses = "\n\n".join(
            f"{'=' * 72}\n{name} {versions[name]}\n{'=' * 72}\n\n{license_text(work, name)}"
            for name in ("yjs", "lib0")
        )
        (out / "LICENSE").write_text(licenses + "\n", encoding="utf-8")
        (out / "VERSION").write_text(
            f"yjs {versions['yjs']}\n"
            f"lib0 {versions['lib0']}\n"
            f"esbuild {installed_version(work, 'esbuild')}\n"
            f"file yjs.mjs\n"
            f"bytes {len(data)}\n"
            f"sha256 {hashlib.sha256(data).hexdigest()}\n"
            "built by scripts/vendor_yjs.py "
            "(npm install, then esbuild --bundle --format=esm --minify)\n",
            encoding="utf-8",
        )
        print(f"wrote {out / 'yjs.mjs'} ({len(data)} bytes), VERSION and LICENSE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yjs", default=YJS_VERSION, help=f"Yjs version (default {YJS_VERSION})")
    parser.add_argument(
        "--esbuild", default=ESBUILD_VERSION, help=f"esbuild version (default {ESBUILD_VERSION})"
    )
    parser.add_argument("--out", type=Path, default=VENDOR, help="output folder")
    args = parser.parse_args(argv)
    try:
        bundle(args.yjs, args.esbuild, args.out)
    except subprocess.CalledProcessError as exc:
        print(f"vendor_yjs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
