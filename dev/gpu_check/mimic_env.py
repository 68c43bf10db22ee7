#!/usr/bin/env python3
"""Make a CPU stand-in for the GPU machine's Python: a venv that sees only the image's packages.

    python3 dev/gpu_check/mimic_env.py BASE_VENV DEST [--packages FILE]

``BASE_VENV`` is a Python 3.12 venv holding torch 2.11 + torchvision 0.26 (and possibly more:
detectron2, fvcore, ...). ``DEST`` becomes a venv of the same interpreter whose site-packages
links (symlinks) the files of every distribution of ``BASE_VENV`` that the GPU image also holds
(``image_packages.txt`` beside this file) and nothing else. A module that the carried wheels
(``dev/gpu_check_prepare.sh``) forget is then missing in ``DEST`` as it is on the GPU machine,
and ``GPU_CHECK_DRY_RUN=1 dev/gpu_check.sh`` run with ``DEST/bin`` first on ``PATH`` fails
here on it. Nothing in ``BASE_VENV`` is changed; ``DEST`` is replaced if it exists.

Standard library only. Prints what it linked and what it left out.
"""
import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        sys.exit(f"mimic_env: expected one lib/python3*/site-packages in {venv}, found {len(found)}")
    return found[0]


def dist_name(dist_info: Path) -> str:
    for line in (dist_info / "METADATA").read_text(errors="replace").splitlines():
        if line.startswith("Name:"):
            return line.split(":", 1)[1].strip()
        if not line.strip():
            break
    return dist_info.name.rsplit("-", 1)[0]


def installed_files(dist_info: Path) -> tuple:
    """``(top-level entries inside site-packages, names of its scripts in bin/)`` of a distribution."""
    entries, scripts = {dist_info.name}, set()
    record = dist_info / "RECORD"
    if record.exists():
        with open(record, newline="") as f:
            for row in csv.reader(f):
                if not row:
                    continue
                if row[0].startswith("../"):  # outside site-packages: keep the scripts in bin/
                    parts = row[0].split("/")
                    if len(parts) >= 2 and parts[-2] == "bin":
                        scripts.add(parts[-1])
                    continue
                first = row[0].split("/")[0]
                if first and first != "__pycache__":
                    entries.add(first)
    return entries, scripts


def copy_script(src: Path, dst: Path, python: Path) -> None:
    """A console script, its ``#!`` line pointed at the stand-in's python (binaries: a link)."""
    data = src.read_bytes()
    if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
        dst.write_bytes(b"#!" + str(python).encode() + b"\n" + data.split(b"\n", 1)[1])
        dst.chmod(0o755)
    else:
        os.symlink(src, dst)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="venv with torch 2.11 + torchvision 0.26 for Python 3.12")
    p.add_argument("dest", type=Path, help="the stand-in venv to (re)create")
    p.add_argument("--packages", type=Path, default=HERE / "image_packages.txt", help="the image's distributions")
    args = p.parse_args()

    allowed = {normalize(l.strip()) for l in args.packages.read_text().splitlines() if l.strip() and not l.startswith("#")}
    base = args.base.resolve()
    src = site_packages(base)
    probe = "import sys; print(sys._base_executable)"
    interpreter = subprocess.run([str(base / "bin" / "python"), "-c", probe], check=True, text=True,
                                 stdout=subprocess.PIPE).stdout.strip()
    dest = args.dest.absolute()
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(dest)], check=True)
    dst = site_packages(dest)

    kept, dropped, linked = [], [], set()
    for dist_info in sorted(src.glob("*.dist-info")):
        name = dist_name(dist_info)
        if normalize(name) not in allowed:
            dropped.append(name)
            continue
        kept.append(name)
        entries, scripts = installed_files(dist_info)
        for entry in sorted(entries):
            if entry in linked or not (src / entry).exists():
                continue
            os.symlink(src / entry, dst / entry)
            linked.add(entry)
        for script in sorted(scripts):
            if (base / "bin" / script).is_file() and not (dest / "bin" / script).exists():
                copy_script(base / "bin" / script, dest / "bin" / script, dest / "bin" / "python")
    print(f"mimic_env: {dest} ({interpreter}); {len(kept)} distributions of {base} linked")
    print(f"mimic_env: left out (not on the GPU image): {', '.join(dropped) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
