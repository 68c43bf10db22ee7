#!/usr/bin/env python3
"""Set up everything instfcn-d2 needs, from nothing or on top of an environment you already have.

Run through ``dev/setup_env.sh`` (the README's commands do). Standard library only: it runs with
the machine's ``python3`` before any environment exists. A second run only checks, in seconds.

Steps, each skipped when already done:

1. Python environment: ``INSTFCN_VENV`` (default ``./.venv``). Created with ``$PYTHON -m venv``
   when absent; an environment that exists (yours, or a conda prefix) is used as it is, and only
   what is missing is installed into it.
2. torch + torchvision: kept when present and inside the supported range
   (``instfcn_d2/supported.py``). Otherwise the newest pair inside the range that this machine's
   pip may install (its configuration, constraints included, is respected, never overridden), or
   the torch given by ``INSTFCN_TORCH_VERSION``. A CPU-only torch beside a CUDA torchvision (the
   known broken pair) is reported before anything is built.
3. Other dependencies: ``dev/requirements.txt`` (bounds). In an environment this script created,
   ``dev/requirements-lock.txt`` (the versions CI tested) pins them further.
4. detectron2, first route that applies:
   a. ``DETECTRON2_SRC``: a source archive (.tar.gz, .zip) or folder you give;
   b. main at the tested commit from an archive in ``INSTFCN_VENDOR_DIR`` (sha256-checked);
   c. main at the tested commit from GitHub, when github.com is reachable;
   d. v0.6 from the package index's ``pb1-detectron2==0.6`` sdist (sha256-checked, pure Python).
   ``INSTFCN_D2_DETECTRON2=v0.6`` skips b and c. Main is built with its C++ ops (CUDA ops too
   when torch sees a GPU or ``INSTFCN_D2_DETECTRON2_CUDA=1``). Each version is adapted by
   ``dev/patch_detectron2.py`` (a copy of your source is patched, never the source itself).
5. instfcn_d2: registered in the environment (editable), and its extension ``instfcn_d2._C``
   built in a separate folder, checked, then swapped in, so that a rebuild (sources changed, torch
   changed, CPU build to CUDA build) never leaves a broken extension in place. CUDA kernels are
   built when torch sees a GPU, when ``FORCE_CUDA=1``, or when the current build has them.

Other environment variables: ``PYTHON`` (interpreter that makes the venv, default ``python3``),
``INSTFCN_D2_NO_GITHUB=1`` (skip the GitHub probe), ``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``,
``MAX_JOBS`` (parallel compile jobs, default: the number of cores).
"""
import contextlib
import glob
import hashlib
import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = runpy.run_path(str(ROOT / "instfcn_d2" / "supported.py"))
REQUIREMENTS = ROOT / "dev" / "requirements.txt"
LOCK = ROOT / "dev" / "requirements-lock.txt"
PATCH_TOOL = ROOT / "dev" / "patch_detectron2.py"
PKG = ROOT / "instfcn_d2"
EXT_STAMP = PKG / "_C.build.json"

D2_COMMIT = SUPPORTED["DETECTRON2_MAIN_COMMIT"]
D2_ARCHIVE_NAME = f"detectron2-{D2_COMMIT[:7]}.tar.gz"
D2_ARCHIVE_SHA256 = "9352c9b37f9f7b6c86c8d13f4a6c66942b3aef280da22f1927b9afd299f183c3"
D2_GITHUB_ARCHIVE = f"https://github.com/facebookresearch/detectron2/archive/{D2_COMMIT}.tar.gz"
D2_SDIST = "pb1-detectron2==0.6"
D2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
CREATED_MARK = ".instfcn_d2_created"  # in an environment this script created
STATE = ".instfcn_d2_setup.json"  # what this script installed there


class SetupError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[setup_env] {msg}", flush=True)


def run(cmd, env=None, cwd=None, quiet=False):
    """Run ``cmd``; on failure raise with its output (which ``quiet`` otherwise hides)."""
    if quiet:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode:
            raise SetupError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-6000:]}")
        return proc.stdout
    # pip warns once per configured find-links folder that lacks a package: noise, dropped.
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if not (line.startswith("WARNING: Location") and "is ignored" in line):
            print(line, end="", flush=True)
    if proc.wait():
        raise SetupError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return ""


# ----------------------------------------------------------------------------------------------
# What the environment holds (one subprocess, so that a second run stays fast)
# ----------------------------------------------------------------------------------------------
_PROBE = r"""
import json, sys, importlib.metadata as md
r = {"python": list(sys.version_info[:3]), "prefix": sys.prefix}
def dist(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
r["torch_dist"], r["torchvision_dist"] = dist("torch"), dist("torchvision")
try:
    import torch
    r["torch"], r["torch_cuda"], r["cuda_available"] = torch.__version__, torch.version.cuda, torch.cuda.is_available()
except Exception as e:
    r["torch_error"] = f"{type(e).__name__}: {e}"
if "torch" in r and r["torchvision_dist"]:
    try:
        import torchvision, torchvision.ops
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        r["torchvision"] = torchvision.__version__
    except Exception as e:
        r["torchvision_error"] = f"{type(e).__name__}: {e}"
if "torchvision" in r:
    try:
        import warnings
        warnings.simplefilter("ignore")
        import detectron2
        from detectron2.utils import comm
        r["detectron2"] = "main" if hasattr(comm, "create_local_process_group") else detectron2.__version__
        r["detectron2_path"] = detectron2.__path__[0]
        try:
            from detectron2 import _C  # noqa
            r["detectron2_C"] = True
        except ImportError:
            r["detectron2_C"] = False
    except Exception as e:
        r["detectron2_error"] = f"{type(e).__name__}: {e}"
    try:
        import importlib.util, os
        spec = importlib.util.find_spec("instfcn_d2")
        r["instfcn_d2_path"] = os.path.dirname(spec.origin) if spec else None
    except Exception as e:
        r["instfcn_d2_error"] = f"{type(e).__name__}: {e}"
if "torch" in r and len(sys.argv) > 1:  # the extension file, loaded by path: needs torch only
    try:
        import importlib.util
        spec = importlib.util.spec_from_file_location("instfcn_d2._C", sys.argv[1])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        r["ext"] = "cuda" if torch.ops.instfcn_d2.has_cuda() else "cpu"
    except Exception as e:
        r["ext_error"] = f"{type(e).__name__}: {e}"
print("PROBE" + json.dumps(r))
"""


def current_ext() -> list:
    return sorted(glob.glob(str(PKG / "_C*.so")))


def probe(py: Path, so: str = None) -> dict:
    """What the environment of ``py`` holds; ``so`` (default: the package's extension file) is
    loaded to tell whether it works and whether it has CUDA kernels."""
    so = so or next(iter(current_ext()), None)
    args = [str(py), "-c", _PROBE] + ([so] if so else [])
    # cwd "/": the source tree must not shadow what is installed.
    proc = subprocess.run(args, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[5:])
    raise SetupError(f"could not inspect the environment of {py}:\n{proc.stderr[-3000:]}")


def pip(py: Path):
    return [str(py), "-m", "pip", "--disable-pip-version-check"]


def load_state(venv: Path) -> dict:
    try:
        return json.loads((venv / STATE).read_text())
    except (OSError, ValueError):
        return {}


def save_state(venv: Path, state: dict) -> None:
    (venv / STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# 1. environment
# ----------------------------------------------------------------------------------------------
def ensure_environment(venv: Path):
    py = venv / "bin" / "python"
    if py.exists():
        ours = (venv / CREATED_MARK).exists()
        say(f"environment {venv} exists ({'made by this script' if ours else 'yours: only what is missing is installed'})")
    else:
        maker = os.environ.get("PYTHON", "python3")
        say(f"creating venv {venv} with {maker}")
        run([maker, "-m", "venv", str(venv)])
        (venv / CREATED_MARK).write_text("created by instfcn-d2 dev/setup_env.py\n")
        ours = True
    info = probe(py)
    problem = SUPPORTED["python_problem"](tuple(info["python"]))
    if problem:
        raise SetupError(f"{py}: {problem}; set PYTHON to a supported interpreter (or INSTFCN_VENV to another environment)")
    return py, ours, info


# ----------------------------------------------------------------------------------------------
# 2. torch + torchvision
# ----------------------------------------------------------------------------------------------
def pip_constraints(py: Path) -> list:
    """Lines of pip's configured constraint files (and PIP_CONSTRAINT) that name torch or torchvision."""
    out = subprocess.run(pip(py) + ["config", "list"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    files = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(".constraint"):
            files += value.strip().strip("'\"").split()
    files += os.environ.get("PIP_CONSTRAINT", "").split()
    found = []
    for f in files:
        try:
            for row in Path(f).read_text().splitlines():
                row = row.split("#")[0].strip()
                if row.lower().startswith(("torch", "torchvision")):
                    found.append(f"{row} ({f})")
        except OSError:
            continue
    return found


def resolve_pair(py: Path, torch_spec: str) -> tuple:
    """The (torch, torchvision) versions pip would install for ``torch_spec`` and the supported
    torchvision range, under this machine's pip configuration. Nothing is installed."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = pip(py) + ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                         torch_spec, SUPPORTED["TORCHVISION_REQUIREMENT"]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode or not report.exists():
            tail = "\n".join(line for line in proc.stdout.splitlines() if "is ignored" not in line)[-3000:]
            raise SetupError(f"pip found no torch/torchvision pair for {torch_spec} {SUPPORTED['TORCHVISION_REQUIREMENT']}:\n{tail}")
        items = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
    return versions["torch"], versions["torchvision"]


def broken_pair_message(info: dict) -> str:
    err = info.get("torchvision_error", "")
    if info.get("torch_cuda") is None and "torchvision::nms" in err:
        return (
            f"torch {info['torch']} is a CPU-only build but torchvision {info['torchvision_dist']} was built "
            "for a CUDA torch: its compiled ops cannot load ('operator torchvision::nms does not exist'). "
            "Install the torchvision built for this torch (same index / wheel flavour), or the CUDA build "
            "of torch, which also runs on CPU-only machines."
        )
    return f"torchvision {info['torchvision_dist']} does not work with torch {info['torch']}: {err}"


def ensure_torch(py: Path, ours: bool, info: dict) -> dict:
    wanted = os.environ.get("INSTFCN_TORCH_VERSION")
    have = info.get("torch")
    if have and "torch_error" not in info:
        problem = SUPPORTED["torch_problem"](have)
        if wanted and have.split("+")[0] != wanted:
            problem = f"torch {have} is installed but INSTFCN_TORCH_VERSION={wanted} asks for another"
        if problem and not ours:
            raise SetupError(f"{py}: {problem} (this environment is yours: it is not changed)")
        if not problem:
            if info.get("torchvision_dist") is None:
                torch_v, tv = resolve_pair(py, f"torch=={have.split('+')[0]}")
                say(f"torch {have} present; installing the matching torchvision {tv}")
                run(pip(py) + ["install", "-q", f"torch=={torch_v}", f"torchvision=={tv}"])
                return probe(py)
            if "torchvision_error" in info:
                raise SetupError(broken_pair_message(info))
            tv_problem = not (SUPPORTED["TORCHVISION_MIN"] <= SUPPORTED["major_minor"](info["torchvision"]) <= SUPPORTED["TORCHVISION_MAX"])
            if tv_problem:
                raise SetupError(f"torchvision {info['torchvision']} is outside the supported range {SUPPORTED['TORCHVISION_REQUIREMENT']}")
            say(f"torch {have}, torchvision {info['torchvision']} present (supported range {SUPPORTED['TORCH_REQUIREMENT']})")
            return info
        say(f"{problem}: replacing it in this script's environment")
    elif "torch_error" in info and not ours:
        raise SetupError(f"{py}: torch is installed but does not import: {info['torch_error']}")
    spec = f"torch=={wanted}" if wanted else SUPPORTED["TORCH_REQUIREMENT"]
    if wanted:
        problem = SUPPORTED["torch_problem"](wanted)
        if problem:
            raise SetupError(f"INSTFCN_TORCH_VERSION={wanted}: {problem}")
    say(f"choosing a torch / torchvision pair for {spec} (pip resolves it; nothing is installed yet)")
    torch_v, tv = resolve_pair(py, spec)
    if wanted:
        why = f"INSTFCN_TORCH_VERSION={wanted}"
    else:
        limits = pip_constraints(py)
        why = "the newest pair in the supported range that this machine's pip may install"
        why += f"; pip's configuration limits it: {'; '.join(limits)}" if limits else " (no pip constraint on torch here)"
    say(f"chose torch {torch_v} + torchvision {tv}: {why}")
    t0 = time.time()
    run(pip(py) + ["install", "-q", f"torch=={torch_v}", f"torchvision=={tv}"])
    info = probe(py)
    if "torchvision_error" in info or "torch_error" in info:
        raise SetupError(broken_pair_message(info) if "torchvision_error" in info else info["torch_error"])
    say(f"installed torch {info['torch']} + torchvision {info['torchvision']} in {time.time() - t0:.0f} s")
    return info


# ----------------------------------------------------------------------------------------------
# 3. other dependencies
# ----------------------------------------------------------------------------------------------
def ensure_requirements(py: Path, venv: Path, ours: bool, info: dict) -> None:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + (LOCK.read_bytes() if ours else b"")).hexdigest()
    key = f"{digest} {'.'.join(map(str, info['python'][:2]))} {info['torch']}"
    state = load_state(venv)
    if state.get("requirements") == key:
        say("dependencies present")
        return False
    base = pip(py) + ["install", "-q", "-r", str(REQUIREMENTS)]
    if ours:
        say(f"installing dependencies: {REQUIREMENTS.relative_to(ROOT)} pinned by {LOCK.relative_to(ROOT)}")
        try:
            run(base + ["-c", str(LOCK)], quiet=True)
        except SetupError as e:
            say(f"the tested versions do not install here ({str(e).splitlines()[-1][:200]}); "
                f"installing within the bounds of {REQUIREMENTS.name} instead")
            run(base)
    else:
        say(f"installing what is missing from {REQUIREMENTS.relative_to(ROOT)} (bounds; your versions are kept where they fit)")
        run(base)
    state["requirements"] = key
    save_state(venv, state)
    return True


# ----------------------------------------------------------------------------------------------
# 4. detectron2
# ----------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest``; returns the folder holding ``setup.py``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            t.extractall(dest, **kwargs)
    roots = [Path(p).parent for p in glob.glob(str(dest / "*" / "setup.py")) + glob.glob(str(dest / "setup.py"))]
    if len(roots) != 1:
        raise SetupError(f"{archive}: expected one source tree with a setup.py, found {len(roots)}")
    return roots[0]


def github_reachable() -> bool:
    if os.environ.get("INSTFCN_D2_NO_GITHUB") == "1":
        return False
    try:
        urllib.request.urlopen(urllib.request.Request("https://github.com", method="HEAD"), timeout=10)
        return True
    except Exception:
        return False


def find_cuda_home(torch_cuda: str = None) -> str:
    """The CUDA toolkit root (holds bin/nvcc and lib64/libcudart). /usr/local/bin/nvcc may be a
    wrapper script, so the root is looked for, not derived from ``which nvcc``."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    found = []
    for cand in sorted(glob.glob("/usr/local/cuda*")):
        if os.access(os.path.join(cand, "bin", "nvcc"), os.X_OK) and glob.glob(os.path.join(cand, "lib64", "libcudart.so*")):
            found.append(os.path.realpath(cand))
    if torch_cuda:
        major = torch_cuda.split(".")[0]
        same = [c for c in found if os.path.basename(c).startswith(f"cuda-{major}")]
        found = same or found
    return found[-1] if found else ""


def d2_source(work: Path, py: Path, flavour_wanted: str) -> tuple:
    """(source folder, route description) by the first route that applies."""
    user = os.environ.get("DETECTRON2_SRC")
    if user:
        src = Path(user).expanduser().resolve()
        if src.is_dir():
            dest = work / "src"
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "build", "*.so"))
            return dest, f"DETECTRON2_SRC folder {src} (a copy is patched)"
        if src.is_file():
            return unpack(src, work / "src"), f"DETECTRON2_SRC archive {src}"
        raise SetupError(f"DETECTRON2_SRC={user}: no such file or folder")
    if flavour_wanted != "v0.6":
        vendor = os.environ.get("INSTFCN_VENDOR_DIR")
        archive = Path(vendor) / D2_ARCHIVE_NAME if vendor else None
        if archive and archive.is_file():
            digest = sha256(archive)
            if digest != D2_ARCHIVE_SHA256:
                raise SetupError(f"{archive}: sha256 {digest} is not the expected {D2_ARCHIVE_SHA256}")
            return unpack(archive, work / "src"), f"archive {archive} (main at {D2_COMMIT[:7]}, sha256 checked)"
        if github_reachable():
            archive = work / D2_ARCHIVE_NAME
            say(f"downloading detectron2 main at {D2_COMMIT[:7]} from GitHub")
            urllib.request.urlretrieve(D2_GITHUB_ARCHIVE, archive)
            return unpack(archive, work / "src"), f"GitHub, main at {D2_COMMIT[:7]}"
        say("no detectron2 main source here (no DETECTRON2_SRC, no vendored archive, no GitHub): using v0.6")
    run(pip(py) + ["download", "-q", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", D2_SDIST, "-d", str(work)], quiet=True)
    tarball = next(work.glob("pb1-detectron2-*.tar.gz"))
    if sha256(tarball) != D2_SDIST_SHA256:
        raise SetupError(f"{tarball}: sha256 mismatch (expected {D2_SDIST_SHA256})")
    return unpack(tarball, work / "src"), f"package index sdist {D2_SDIST} (sha256 checked; pure Python)"


def ensure_detectron2(py: Path, venv: Path, ours: bool, info: dict) -> dict:
    wanted = os.environ.get("INSTFCN_D2_DETECTRON2", "")
    if wanted and wanted not in SUPPORTED["DETECTRON2_VERSIONS"]:
        raise SetupError(f"INSTFCN_D2_DETECTRON2={wanted}: expected one of {', '.join(SUPPORTED['DETECTRON2_VERSIONS'])}")
    have = info.get("detectron2")
    if have and wanted and have.replace("0.6", "v0.6") != wanted and ours:
        say(f"detectron2 {have} present but INSTFCN_D2_DETECTRON2={wanted}: replacing it")
        run(pip(py) + ["uninstall", "-q", "-y", "detectron2", "pb1-detectron2"], quiet=True)
        have = None
    if have:
        ops = "with its C++ ops" if info.get("detectron2_C") else "without detectron2._C"
        state = load_state(venv)
        where = f" ({state['detectron2']})" if state.get("detectron2") else ""
        say(f"detectron2 {'main' if have == 'main' else 'v' + have} present {ops}{where}")
        return info
    if "detectron2_error" in info and "No module named 'detectron2'" not in info["detectron2_error"]:
        raise SetupError(f"detectron2 is installed but does not import: {info['detectron2_error']}")
    with tempfile.TemporaryDirectory(prefix="instfcn_d2_detectron2_") as tmp:
        work = Path(tmp)
        src, route = d2_source(work, py, wanted)
        patcher = runpy.run_path(str(PATCH_TOOL))
        try:
            version = patcher["detect_version"](src)
            if wanted and version != wanted:
                raise SetupError(f"{route} holds detectron2 {version}, but INSTFCN_D2_DETECTRON2={wanted}")
            patcher["plan"](src, version)  # every edit checked before any file is written
            with contextlib.redirect_stdout(io.StringIO()):
                patcher["apply"](src, version)
        except patcher["PatchError"] as e:
            raise SetupError(f"detectron2 from {route}: {e}") from None
        say(f"detectron2 {version} from {route}; adapted by dev/patch_detectron2.py")
        env = dict(os.environ)
        env["MAX_JOBS"] = env.get("MAX_JOBS") or str(os.cpu_count() or 1)
        cuda = version == "main" and (info.get("cuda_available") or os.environ.get("INSTFCN_D2_DETECTRON2_CUDA") == "1")
        # detectron2's setup.py reads FORCE_CUDA too: a CUDA build of the project's own kernels
        # (FORCE_CUDA=1) must not make detectron2 build all of its CUDA ops.
        env["FORCE_CUDA"] = "1" if cuda else "0"
        if cuda:
            env["CUDA_HOME"] = find_cuda_home(info.get("torch_cuda"))
            env.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        what = "with its C++ and CUDA ops" if cuda else ("with its C++ ops (CPU)" if version == "main" else "pure Python")
        slow = "; a few minutes for the ops" if version == "main" else ""
        say(f"building detectron2 {what} (MAX_JOBS={env['MAX_JOBS']}{slow})")
        t0 = time.time()
        run(pip(py) + ["install", "-q", "--no-deps", "--no-build-isolation", str(src)], env=env, cwd=str(work), quiet=True)
        say(f"detectron2 built and installed in {time.time() - t0:.0f} s")
    state = load_state(venv)
    state["detectron2"] = f"{version} from {route}"
    save_state(venv, state)
    info = probe(py)
    if "detectron2_error" in info:
        raise SetupError(f"detectron2 does not import after its installation: {info['detectron2_error']}")
    if version == "main" and not info.get("detectron2_C"):
        raise SetupError("detectron2 main was built but `from detectron2 import _C` fails")
    return info


# ----------------------------------------------------------------------------------------------
# 5. instfcn_d2 and its extension
# ----------------------------------------------------------------------------------------------
def sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(glob.glob(str(ROOT / "layers" / "csrc" / "**" / "*"), recursive=True)) + [str(ROOT / "setup.py")]:
        if os.path.isfile(path):
            h.update(os.path.relpath(path, ROOT).encode())
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def ensure_instfcn(py: Path, info: dict) -> bool:
    if info.get("instfcn_d2_path") != str(PKG):
        where = info.get("instfcn_d2_path")
        say(f"registering instfcn_d2 from {ROOT} in the environment (editable)" + (f"; it was {where}" if where else ""))
        env = dict(os.environ, INSTFCN_D2_BUILD_EXT="0")
        run(pip(py) + ["install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], env=env, quiet=True)
        changed = True
    else:
        say("instfcn_d2 registered in the environment")
        changed = False

    try:
        stamp = json.loads(EXT_STAMP.read_text())
    except (OSError, ValueError):
        stamp = {}
    current = current_ext()
    cuda_wanted = os.environ.get("FORCE_CUDA") == "1" or info.get("cuda_available") or stamp.get("flavour") == "cuda"
    flavour = "cuda" if cuda_wanted else "cpu"
    key = {"flavour": flavour, "torch": info["torch"], "python": ".".join(map(str, info["python"][:2])), "sources": sources_digest()}
    if current and all(stamp.get(k) == v for k, v in key.items()) and info.get("ext") == flavour:
        say(f"instfcn_d2._C [{flavour}] up to date")
        return changed
    reason = "not built yet" if not current else ", ".join(
        f"{k} {stamp.get(k)} -> {v}" for k, v in key.items() if stamp.get(k) != v) or "it does not load"
    env = dict(os.environ, INSTFCN_D2_BUILD_EXT="1", MAX_JOBS=os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1))
    if flavour == "cuda":
        env["FORCE_CUDA"] = "1"
        env["CUDA_HOME"] = find_cuda_home(info.get("torch_cuda"))
        if not env["CUDA_HOME"]:
            raise SetupError("a CUDA build of instfcn_d2._C was asked for (FORCE_CUDA=1 or a GPU), but no CUDA toolkit "
                             "was found: set CUDA_HOME to the toolkit root (it holds bin/nvcc and lib64/libcudart.so)")
        env.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        detail = f"C++ + CUDA; CUDA_HOME={env['CUDA_HOME']}, TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}"
    else:
        env["FORCE_CUDA"] = "0"
        detail = "C++"
    say(f"building instfcn_d2._C [{detail}] aside ({reason}); the current one stays in place until the new one loads")
    t0 = time.time()
    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ext_", dir=ROOT / "build") as tmp:
        run([str(py), "setup.py", "-q", "build_ext", "--build-lib", f"{tmp}/lib", "--build-temp", f"{tmp}/tmp"],
            env=env, cwd=str(ROOT), quiet=True)
        built = glob.glob(f"{tmp}/lib/instfcn_d2/_C*.so")
        if len(built) != 1:
            raise SetupError(f"the extension build produced {built}")
        got = probe(py, built[0]).get("ext")
        if got != flavour:
            raise SetupError(f"the new instfcn_d2._C does not load as a {flavour} build (got {got or 'an import error'}); the old one is kept")
        final = PKG / os.path.basename(built[0])
        staged = PKG / (".new" + final.name)
        shutil.copy2(built[0], staged)
        os.replace(staged, final)  # atomic: the package never sees a half-written file
        for old in current:
            if old != str(final):
                os.remove(old)
    key["built"] = time.strftime("%Y-%m-%d %H:%M:%S")
    EXT_STAMP.write_text(json.dumps(key, indent=1) + "\n")
    say(f"instfcn_d2._C [{flavour}] built and swapped in ({time.time() - t0:.0f} s)")
    return True


def main() -> int:
    t0 = time.time()
    venv = Path(os.environ.get("INSTFCN_VENV") or ROOT / ".venv").expanduser().absolute()
    try:
        py, ours, info = ensure_environment(venv)
        info = ensure_torch(py, ours, info)
        if ensure_requirements(py, venv, ours, info):
            info = probe(py)
        info = ensure_detectron2(py, venv, ours, info)
        final = probe(py) if ensure_instfcn(py, info) else info
    except SetupError as e:
        print(f"[setup_env] error: {e}", file=sys.stderr)
        return 1
    d2 = final.get("detectron2", "?")
    d2 = ("main" if d2 == "main" else f"v{d2}") + (" with _C" if final.get("detectron2_C") else " (pure Python)")
    cuda = f"CUDA {final['torch_cuda']} build" if final.get("torch_cuda") else "CPU-only build"
    say(f"ready in {time.time() - t0:.0f} s: Python {'.'.join(map(str, final['python']))} | torch {final['torch']} ({cuda}) | "
        f"torchvision {final['torchvision']} | detectron2 {d2} | environment {venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
