#!/usr/bin/env python3
"""Build / download the wheels the GPU machine's image lacks, for its Python 3.12, into one folder.

    python dev/gpu_check/build_wheels.py OUT_DIR     (run by dev/gpu_check_prepare.sh)

Run it with a Python that has torch (detectron2's setup.py imports torch even to make a wheel).
The GPU machine reaches no package index, so everything ``import detectron2.engine,
detectron2.evaluation, instfcn_d2`` needs there besides its image (``image_packages.txt``) travels
as wheels:

- detectron2 **v0.6**, pure Python: the package index's ``pb1-detectron2==0.6`` sdist (the name and
  sha256 that ``dev/setup_env.py`` checks) adapted by ``dev/patch_detectron2.py``, built into a
  ``py3-none-any`` wheel here. Why v0.6 and not main: the sdist has no C++ sources, so its wheel
  holds no compiled code, does not depend on the torch ABI or on this machine's compilers and
  libraries, and installs with ``--no-deps`` on any Python 3; and v0.6 + Python 3.12 + torch 2.11
  is the stack that CI's smoke set runs, i.e. the GPU image's. Main is supported with its C++ ops
  only; those would be a binary for one torch build, made on another machine (or minutes of
  compiling on the GPU machine), for ops this project does not use.
- pure-Python sdists built into wheels here: fvcore, antlr4-python3-runtime;
- wheels downloaded for CPython 3.12 manylinux x86_64: iopath, yacs, termcolor, omegaconf,
  hydra-core, pycocotools (compiled).

Versions: those of ``dev/requirements-lock.txt`` (what CI tested), antlr4 4.9.3 (omegaconf 2.3's
pin). OUT_DIR is emptied of wheels first (pip on the GPU machine refuses two versions of one
package). At the end every wheel's requirements are checked against the image's packages plus
the carried ones, with the markers evaluated for CPython 3.12 on Linux x86_64.
"""
import argparse
import glob
import hashlib
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LOCK = ROOT / "dev" / "requirements-lock.txt"
IMAGE_PACKAGES = HERE / "image_packages.txt"

SDIST_BUILT = ["fvcore", "antlr4-python3-runtime"]
DOWNLOADED = ["iopath", "yacs", "termcolor", "omegaconf", "hydra-core", "pycocotools"]
FALLBACK_VERSIONS = {"antlr4-python3-runtime": "4.9.3"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# Declared by detectron2 v0.6's setup.py but not needed by what runs on the GPU machine: not carried.
NOT_NEEDED = {
    "black": "imported only inside LazyConfig.to_py (Python lazy configs; instfcn-d2 uses yacs configs)",
    "pydot": "not imported anywhere in detectron2 v0.6",
    "future": "Python 2 compatibility; not imported anywhere in detectron2 v0.6",
}
# markers of the GPU machine's Python, for the requirement check
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def say(msg: str) -> None:
    print(f"[build_wheels] {msg}", flush=True)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(cmd, cwd=None):
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        tail = "\n".join(l for l in proc.stdout.splitlines() if "is ignored" not in l)[-4000:]
        sys.exit(f"[build_wheels] failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return proc.stdout


def locked_versions() -> dict:
    versions = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            versions[normalize(name)] = version.strip()
    return versions


def pip():
    return [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detectron2_wheel(out: Path) -> Path:
    setup_env = runpy.run_path(str(ROOT / "dev" / "setup_env.py"))
    spec, expected = setup_env["D2_SDIST"], setup_env["D2_SDIST_SHA256"]
    with tempfile.TemporaryDirectory(prefix="gpu_check_d2_") as tmp:
        work = Path(tmp)
        say(f"detectron2: downloading the sdist {spec}")
        run(pip() + ["download", "-q", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", spec, "-d", str(work)])
        tarball = next(work.glob("pb1-detectron2-*.tar.gz"))
        if sha256(tarball) != expected:
            sys.exit(f"[build_wheels] {tarball.name}: sha256 {sha256(tarball)} is not the expected {expected}")
        with tarfile.open(tarball) as t:
            t.extractall(work / "src", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        (src,) = [Path(p).parent for p in glob.glob(str(work / "src" / "*" / "setup.py"))]
        say("detectron2: adapting it with dev/patch_detectron2.py")
        run([sys.executable, str(ROOT / "dev" / "patch_detectron2.py"), str(src)])
        say("detectron2: building a pure-Python wheel")
        env_cmd = pip() + ["wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)]
        run(env_cmd, cwd=str(work))
    (wheel,) = out.glob("pb1_detectron2-*.whl")
    with zipfile.ZipFile(wheel) as z:
        compiled = [n for n in z.namelist() if n.endswith((".so", ".pyd"))]
    if not wheel.name.endswith("-py3-none-any.whl") or compiled:
        sys.exit(f"[build_wheels] {wheel.name} is not pure Python ({compiled[:3]})")
    return wheel


def requirement_problems(wheels, carried: set) -> list:
    """Requirements of ``wheels`` that neither the image nor the carried wheels provide."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        say("packaging is not importable here: requirement check skipped")
        return []
    image = {normalize(l.strip()) for l in IMAGE_PACKAGES.read_text().splitlines() if l.strip() and not l.startswith("#")}
    problems = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            lines = z.read(meta).decode(errors="replace").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            name = normalize(req.name)
            if name in NOT_NEEDED:
                say(f"{wheel.name} declares {req}: not carried, {NOT_NEEDED[name]}")
            elif name not in image and name not in carried:
                problems.append(f"{wheel.name} needs {req} (neither on the image nor carried)")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="wheel folder (e.g. .whl)")
    args = p.parse_args()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    locked = locked_versions()

    def pinned(name: str) -> str:
        version = locked.get(normalize(name)) or FALLBACK_VERSIONS[name]
        return f"{name}=={version}"

    detectron2_wheel(out)
    for name in SDIST_BUILT:
        say(f"{pinned(name)}: wheel (built here from the sdist when the index has no wheel)")
        run(pip() + ["wheel", "-q", "--no-deps", pinned(name), "-w", str(out)])
    platforms = [a for plat in PLATFORMS for a in ("--platform", plat)]
    for name in DOWNLOADED:
        say(f"{pinned(name)}: downloading the wheel for CPython 3.12, manylinux x86_64")
        run(pip() + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                     "--implementation", "cp", *platforms, pinned(name), "-d", str(out)])

    wheels = sorted(out.glob("*.whl"))
    stray = [w for w in out.iterdir() if w.suffix != ".whl"]
    for s in stray:  # sdists pip left beside the wheels
        shutil.rmtree(s) if s.is_dir() else s.unlink()
    names = [normalize(w.name.split("-")[0]) for w in wheels]
    if len(set(names)) != len(names):
        sys.exit(f"[build_wheels] two versions of one package in {out}: {[w.name for w in wheels]}")
    carried = set(names) | {"detectron2"}
    problems = requirement_problems(wheels, carried)
    for w in wheels:
        say(f"  {w.name} ({w.stat().st_size / 2**20:.2f} MiB)")
    if problems:
        say("requirements not met on the GPU image (add them to build_wheels.py):\n  " + "\n  ".join(problems))
        return 1
    say(f"{len(wheels)} wheels in {out}; every requirement is on the image or carried")
    return 0


if __name__ == "__main__":
    sys.exit(main())
