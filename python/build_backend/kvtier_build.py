"""kvtier's PEP 517 build backend, written with the standard library only.

pip's build isolation would download setuptools; this backend needs nothing (pyproject.toml says
`requires = []`), so `pip install ./python` works offline. It builds:

- the wheel: kvtier/*.py; kvtier/_version.py (the project's version: `project(kvtier VERSION ...)`
  in the top CMakeLists.txt, or PKG-INFO in an sdist); the gRPC stubs kvtier/v1/*_pb2*.py,
  generated from proto/ at build time (see _stub_generator); and the native module
  kvtier/_native*.so (the C++ client's UCX data plane), which in a checkout CMake builds for the
  installing interpreter in the checkout's build/ (config setting `native`: cmake or off;
  `build-dir`; see _native_dir), or one already built (`native-dir`). A wheel with a native
  module is tagged for this interpreter and platform; without one it is py3-none-any, and kvtier
  uses gRPC alone.
- the sdist: the sources and a copy of proto/, so that it builds away from the repository.
- the editable wheel (`pip install -e`): a .pth naming this folder, beside the generated files
  in site-packages/kvtier/ (kvtier/__init__.py adds that folder to the package's path).

`python3 kvtier_build.py stage DIR` writes DIR/kvtier as the wheel holds it (CMake's
build/python), with the same stub generator.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # python/
PACKAGE = "kvtier"
# Gencode of older protoc does not load in protobuf >= 4 ("Descriptors cannot be created
# directly"); 3.19 is the first whose output the newer runtimes accept.
MIN_PROTOC = (3, 19)


class BuildError(Exception):
    pass


# ---- project metadata -------------------------------------------------------------------------

def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: get_requires_for_build_* asked for tomli
        import tomli as tomllib
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _version() -> str:
    """The project's one version: the top CMakeLists.txt's, or (in an sdist) PKG-INFO's."""
    cmake = os.path.join(HERE, "..", "CMakeLists.txt")
    if os.path.exists(cmake):
        with open(cmake) as f:
            m = re.search(r"project\(\s*kvtier\s+VERSION\s+([0-9][0-9.]*)", f.read())
        if not m:
            raise BuildError(f"{cmake}: no `project(kvtier VERSION x.y.z ...)`")
        return m.group(1)
    pkg_info = os.path.join(HERE, "PKG-INFO")
    if os.path.exists(pkg_info):
        with open(pkg_info) as f:
            m = re.search(r"^Version: (\S+)$", f.read(), re.M)
        if m:
            return m.group(1)
    raise BuildError("version: neither ../CMakeLists.txt (a checkout) nor PKG-INFO (an sdist)")


def _metadata(gencode_version: str = "") -> str:
    """PKG-INFO / METADATA. `gencode_version`: the "Protobuf Python Version" the stubs were
    generated for, when protoc wrote one (protoc 26 and newer): the runtime may not be older."""
    p = _pyproject()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {_version()}"]
    if "description" in p:
        lines.append(f"Summary: {p['description']}")
    if "requires-python" in p:
        lines.append(f"Requires-Python: {p['requires-python']}")
    if "license" in p and "text" in p["license"]:
        lines.append(f"License: {p['license']['text']}")
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    for name, url in p.get("urls", {}).items():
        lines.append(f"Project-URL: {name}, {url}")
    for d in p.get("dependencies", []):
        if gencode_version and re.match(r"protobuf\b", d):
            d = f"protobuf>={gencode_version}"
        lines.append(f"Requires-Dist: {d}")
    body = ""
    if "readme" in p:
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(HERE, p["readme"]), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


# ---- gRPC stubs -------------------------------------------------------------------------------

def _proto_root() -> str:
    """proto/ beside this package in an sdist, else the repository's."""
    for root in (os.path.join(HERE, "proto"), os.path.join(HERE, "..", "proto")):
        if os.path.isdir(os.path.join(root, PACKAGE, "v1")):
            return os.path.abspath(root)
    raise BuildError("proto/kvtier/v1 not found (build from the repository, or from the sdist)")


def _protoc_version(cmd) -> tuple:
    try:
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    m = re.search(r"libprotoc (\d+)\.(\d+)", out.stdout)
    return (int(m.group(1)), int(m.group(2))) if out.returncode == 0 and m else ()


def _stub_generator():
    """(protoc command, its arguments naming the gRPC plugin, what it is) or None.

    In order: $PROTOC, when set, with $GRPC_PYTHON_PLUGIN or `grpc_python_plugin` (CMake names
    its own); grpc_tools where the building interpreter has it (pip's isolated build has it
    only when get_requires_for_build_wheel asked for it); `protoc` with `grpc_python_plugin`
    (Debian 12: protobuf-compiler, protobuf-compiler-grpc). Each only when its protoc is
    MIN_PROTOC or newer (Debian's python3-grpc-tools, 1.14, is older).
    """
    plugin = os.environ.get("GRPC_PYTHON_PLUGIN") or shutil.which("grpc_python_plugin")

    def protoc(path):
        version = _protoc_version([path]) if path and plugin else ()
        if version >= MIN_PROTOC:
            return [path], ["--plugin=protoc-gen-grpc_python=" + plugin], \
                "%s (libprotoc %d.%d) with %s" % ((path,) + version + (plugin,))
        return None

    if os.environ.get("PROTOC"):
        return protoc(os.environ["PROTOC"])
    try:
        import grpc_tools  # noqa: F401
        cmd = [sys.executable, "-m", "grpc_tools.protoc"]
        version = _protoc_version(cmd)
        if version >= MIN_PROTOC:
            return cmd, [], "grpc_tools (libprotoc %d.%d)" % version
    except ImportError:
        pass
    return protoc(shutil.which("protoc"))


def _generate_stubs(out_dir: str) -> str:
    """Writes out_dir/kvtier/v1/ (__init__.py and the stubs of every proto/kvtier/v1/*.proto).
    Returns the protobuf runtime version the stubs need at least, where protoc says it
    (protoc 26 and newer write "# Protobuf Python Version: X.Y.Z"), else ""."""
    gen = _stub_generator()
    if gen is None:
        raise BuildError(
            "kvtier: no generator for the gRPC stubs. Install Debian's protobuf-compiler and "
            "protobuf-compiler-grpc (protoc and grpc_python_plugin; scripts/install-deps.sh "
            "does), or set $PROTOC and $GRPC_PYTHON_PLUGIN, or build where grpcio-tools can be "
            f"installed. protoc must be {MIN_PROTOC[0]}.{MIN_PROTOC[1]} or newer.")
    cmd, plugin_args, what = gen
    print(f"kvtier: generating the gRPC stubs with {what}", file=sys.stderr)
    root = _proto_root()
    protos = sorted(glob.glob(os.path.join(root, PACKAGE, "v1", "*.proto")))
    os.makedirs(os.path.join(out_dir, PACKAGE, "v1"), exist_ok=True)
    run = subprocess.run(cmd + plugin_args + ["--proto_path=" + root, "--python_out=" + out_dir,
                                              "--grpc_python_out=" + out_dir] + protos,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise BuildError(f"kvtier: {' '.join(cmd)} failed:\n{run.stderr}")
    with open(os.path.join(out_dir, PACKAGE, "v1", "__init__.py"), "w") as f:
        f.write('"""Generated from proto/kvtier/v1 when kvtier was built."""\n')
    with open(os.path.join(out_dir, PACKAGE, "v1", "types_pb2.py")) as f:
        m = re.search(r"^# Protobuf Python Version: (\S+)$", f.read(), re.M)
    return m.group(1) if m else ""


# ---- the package's files ----------------------------------------------------------------------

def _setting(config_settings, name: str, env: str, default: str = "") -> str:
    return (config_settings or {}).get(name) or os.environ.get(env, "") or default


def _checkout() -> str:
    """The repository this python/ is in ("" in an sdist, which holds no C++ sources)."""
    top = os.path.dirname(HERE)
    return top if os.path.exists(os.path.join(top, "src", "client", "cache_client.h")) else ""


def _cmake_native(config_settings) -> str:
    """Builds kvtier._native with CMake for this interpreter; returns the folder it is in.

    The build folder is config setting `build-dir` ($KVTIER_BUILD_DIR), by default the checkout's
    build/ (scripts/build.sh's, so a built tree only relinks what changed, through ccache)."""
    top = _checkout()
    build = os.path.abspath(_setting(config_settings, "build-dir", "KVTIER_BUILD_DIR",
                                     os.path.join(top, "build")))
    # The interpreter itself, not a venv's link to it: the module is for its headers and ABI.
    python = getattr(sys, "_base_executable", "") or sys.executable
    cmd = ["cmake", "-S", top, "-B", build, f"-DPython3_EXECUTABLE={python}"]
    if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        cmd += ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DKVTIER_BENCHMARKS=OFF"]
        if shutil.which("ccache"):
            cmd += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    for step in (cmd, ["cmake", "--build", build, "--target", "kvtier_native"]):
        print("kvtier_build:", " ".join(step), file=sys.stderr, flush=True)
        run = subprocess.run(step, stdout=sys.stderr)
        if run.returncode != 0:
            raise BuildError(
                f"`{' '.join(step)}` failed (exit {run.returncode}): kvtier._native needs "
                "scripts/install-deps.sh's packages; --config-settings native=off builds the "
                "package without it (gRPC alone)")
    return os.path.join(build, "python")


def _native_dir(config_settings) -> str:
    """Where the native module to package is: config setting `native-dir` ($KVTIER_NATIVE_DIR),
    a module already built; else, with `native` ($KVTIER_NATIVE) `cmake` (the default in a
    checkout with cmake on the PATH), one CMake builds now; `off` (or an sdist): none."""
    d = _setting(config_settings, "native-dir", "KVTIER_NATIVE_DIR")
    if d:
        if not os.path.isdir(d):
            raise BuildError(f"native-dir: {d} is not a folder")
        return d
    default = "cmake" if _checkout() and shutil.which("cmake") else "off"
    mode = _setting(config_settings, "native", "KVTIER_NATIVE", default)
    if mode == "off":
        return ""
    if mode != "cmake":
        raise BuildError(f"native: {mode!r} is not cmake or off")
    if not _checkout():
        raise BuildError("native=cmake: needs the repository (an sdist holds no C++ sources)")
    return _cmake_native(config_settings)


def _native_files(config_settings) -> list:
    """Native modules (kvtier._native) for this interpreter, as (path, name in the package)."""
    d = _native_dir(config_settings)
    if not d:
        return []
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    found = []
    for sub in ("", PACKAGE):
        for path in sorted(glob.glob(os.path.join(d, sub, "_native*"))):
            if path.endswith((suffix, ".abi3.so")):
                found.append((path, f"{PACKAGE}/{os.path.basename(path)}"))
    if not found:
        raise BuildError(f"native-dir: {d} holds no kvtier/_native{suffix}")
    return found


def _package_files(gen_dir: str, config_settings, with_sources: bool = True) -> tuple:
    """(path on disk, name in the wheel) of everything kvtier installs, and the protobuf
    version the stubs need at least ("": no more than pyproject.toml says)."""
    files = []
    if with_sources:
        for path in sorted(glob.glob(os.path.join(HERE, PACKAGE, "*.py"))):
            name = os.path.basename(path)
            if name != "_version.py":
                files.append((path, f"{PACKAGE}/{name}"))
    gencode_version = _generate_stubs(gen_dir)
    with open(os.path.join(gen_dir, PACKAGE, "_version.py"), "w") as f:
        f.write(f'"""Written when kvtier was built."""\n__version__ = "{_version()}"\n')
    for path in sorted(glob.glob(os.path.join(gen_dir, PACKAGE, "**", "*.py"), recursive=True)):
        files.append((path, os.path.relpath(path, gen_dir).replace(os.sep, "/")))
    return files + _native_files(config_settings), gencode_version


def stage(out_dir: str) -> None:
    """out_dir/kvtier as the wheel holds it (for CMake's build/python)."""
    with tempfile.TemporaryDirectory() as gen:
        # Files are replaced, not the folder: CMake may put a native module there too.
        for path, name in _package_files(gen, {"native": "off"})[0]:
            dest = os.path.join(out_dir, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(path, dest)


# ---- wheels -----------------------------------------------------------------------------------

def _dist_name() -> str:
    return f"{_pyproject()['name']}-{_version()}"


def _wheel_tag(native: bool) -> str:
    if not native:
        return "py3-none-any"
    impl = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    platform = re.sub(r"[^A-Za-z0-9]", "_", sysconfig.get_platform())
    return f"{impl}-{impl}-{platform}"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _build_wheel(wheel_directory, config_settings, editable: bool) -> str:
    with tempfile.TemporaryDirectory() as gen:
        files, gencode_version = _package_files(gen, config_settings, with_sources=not editable)
        native = any(name.endswith(".so") for _, name in files)
        tag = _wheel_tag(native)
        dist_info = _dist_name() + ".dist-info"
        entries = [(name, open(path, "rb").read()) for path, name in files]
        if editable:
            # The sources stay here; the generated files (in site-packages/kvtier, no __init__.py)
            # join them through kvtier/__init__.py's extend_path.
            entries.append((f"__editable__.{PACKAGE}.pth", (HERE + "\n").encode()))
        entries += [
            (f"{dist_info}/METADATA", _metadata(gencode_version).encode("utf-8")),
            (f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: kvtier_build\n"
                                    f"Root-Is-Purelib: {'false' if native else 'true'}\n"
                                    f"Tag: {tag}\n").encode()),
        ]
        record = [_record_line(n, d) for n, d in entries] + [f"{dist_info}/RECORD,,"]
        entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
        wheel_name = f"{_dist_name()}-{tag}.whl"
        with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w",
                             zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
        return wheel_name


# ---- PEP 517 / PEP 660 hooks ------------------------------------------------------------------

def _build_requires() -> list:
    requires = [] if sys.version_info >= (3, 11) else ["tomli"]
    if _stub_generator() is None:
        requires.append("grpcio-tools")  # needs an index; offline, install protoc instead
    return requires


def get_requires_for_build_wheel(config_settings=None):
    return _build_requires()


def get_requires_for_build_editable(config_settings=None):
    return _build_requires()


def get_requires_for_build_sdist(config_settings=None):
    return [] if sys.version_info >= (3, 11) else ["tomli"]


# No prepare_metadata_for_build_*: the dependencies depend on the stubs' generator, so pip
# reads them from the wheel.


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _build_wheel(wheel_directory, config_settings, editable=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _build_wheel(wheel_directory, config_settings, editable=True)


def build_sdist(sdist_directory, config_settings=None):
    base = _dist_name()
    members = [("pyproject.toml", os.path.join(HERE, "pyproject.toml")),
               ("README.md", os.path.join(HERE, "README.md")),
               ("build_backend/kvtier_build.py", os.path.abspath(__file__))]
    members += [(f"{PACKAGE}/{os.path.basename(p)}", p)
                for p in sorted(glob.glob(os.path.join(HERE, PACKAGE, "*.py")))
                if os.path.basename(p) != "_version.py"]
    root = _proto_root()
    members += [(os.path.relpath(p, os.path.dirname(root)).replace(os.sep, "/"), p)
                for p in sorted(glob.glob(os.path.join(root, PACKAGE, "v1", "*.proto")))]
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as t:
        def add(arcname, data):
            info = tarfile.TarInfo(f"{base}/{arcname}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1577836800
            t.addfile(info, io.BytesIO(data))
        # PKG-INFO carries the version where ../CMakeLists.txt is not.
        add("PKG-INFO", _metadata().encode("utf-8"))
        for arcname, path in members:
            with open(path, "rb") as f:
                add(arcname, f.read())
    return name


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "stage":
        sys.exit("usage: kvtier_build.py stage DIR")
    try:
        stage(sys.argv[2])
    except BuildError as e:
        sys.exit(str(e))
