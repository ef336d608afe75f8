"""`pip install ./python` as a user on Debian 12 runs it, offline, and the build backend's choices.

PipInstall makes a virtualenv with --system-site-packages (so Debian's python3-grpcio,
python3-protobuf and python3-xxhash satisfy the dependencies), installs with --no-index and a
proxy that goes nowhere (nothing may come from the network), then imports kvtier from the venv
and checks its version against the top CMakeLists.txt: from the tree, from an sdist unpacked away
from the repository, and editable. Backend checks the wheel's tags and dependencies, and the
choice of stub generator, with fake protoc programs.

Run by ctest as: /usr/bin/python3 -m unittest (KVTIER_SOURCE_DIR set).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile

SOURCE = os.path.abspath(os.environ.get("KVTIER_SOURCE_DIR",
                                        os.path.join(os.path.dirname(__file__), "..", "..")))
PACKAGE_DIR = os.path.join(SOURCE, "python")
# No network: an index is never asked (--no-index), and any other request meets a dead proxy.
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PIP_NO_CACHE_DIR": "1", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}


# The tree the ctest run is in builds kvtier._native (KVTIER_NATIVE=off where it cannot).
EXPECT_NATIVE = os.environ.get("KVTIER_NATIVE", "cmake") != "off"


def project_version():
    with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
        return re.search(r"project\(kvtier VERSION ([0-9.]+)", f.read()).group(1)


def backend(code, env=None):
    """Runs `code` with kvtier_build imported as `b`, as pip runs the backend (in python/);
    returns its stdout."""
    run = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'build_backend'); "
                               "import kvtier_build as b\n" + textwrap.dedent(code)],
        cwd=PACKAGE_DIR, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if run.returncode != 0:
        raise AssertionError(f"backend failed:\n{run.stderr}")
    return run.stdout


class PipInstall(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.venv = os.path.join(cls.tmp.name, "venv")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", cls.venv],
                       check=True)
        cls.python = os.path.join(cls.venv, "bin", "python")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def pip(self, *args):
        run = subprocess.run([self.python, "-m", "pip", *args], capture_output=True, text=True,
                             env={**os.environ, **OFFLINE}, cwd=self.tmp.name)
        self.assertEqual(run.returncode, 0, f"pip {' '.join(args)}:\n{run.stdout}\n{run.stderr}")
        return run.stdout

    def installed(self):
        """kvtier as the venv's interpreter imports it, away from the source tree."""
        run = subprocess.run(
            [self.python, "-c", "import json, kvtier, kvtier.aio, kvtier.v1.cache_pb2_grpc as g\n"
                                "from kvtier import _dataplane as d\n"
                                "print(json.dumps([kvtier.__version__, kvtier.__file__, "
                                "g.__file__, d._native is not None]))"],
            capture_output=True, text=True, cwd=self.tmp.name,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        self.assertEqual(run.returncode, 0, run.stderr)
        return json.loads(run.stdout)

    def test_install_from_the_tree(self):
        self.pip("install", PACKAGE_DIR)
        try:
            version, init, stubs, native = self.installed()
            self.assertEqual(version, project_version())
            self.assertTrue(init.startswith(self.venv), init)
            self.assertTrue(stubs.startswith(self.venv), stubs)
            self.assertEqual(native, EXPECT_NATIVE, "kvtier._native in the package")
        finally:
            self.pip("uninstall", "--yes", "kvtier")

    def test_install_from_an_sdist_away_from_the_repository(self):
        out = os.path.join(self.tmp.name, "dist")
        os.makedirs(out)
        name = backend(f"print(b.build_sdist({out!r}))").strip()
        self.assertEqual(name, f"kvtier-{project_version()}.tar.gz")
        self.pip("install", os.path.join(out, name))  # pip unpacks it in a temporary folder
        try:
            version, init, _, native = self.installed()
            self.assertEqual(version, project_version())
            self.assertTrue(init.startswith(self.venv), init)
            self.assertFalse(native)  # an sdist holds no C++ sources: gRPC alone
        finally:
            self.pip("uninstall", "--yes", "kvtier")

    def test_editable_install(self):
        self.pip("install", "--editable", PACKAGE_DIR)
        try:
            version, init, stubs, native = self.installed()
            self.assertEqual(version, project_version())
            self.assertEqual(native, EXPECT_NATIVE)
            self.assertEqual(init, os.path.join(PACKAGE_DIR, "kvtier", "__init__.py"))
            self.assertTrue(stubs.startswith(self.venv), stubs)  # generated, not in the tree
        finally:
            self.pip("uninstall", "--yes", "kvtier")


class Backend(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def wheel(self, config=None, env=None):
        """A wheel built with `config` (by default without the native module: PipInstall
        builds that)."""
        config = {"native": "off", **(config or {})}
        name = backend(f"print(b.build_wheel({self.tmp.name!r}, {config!r}))", env).strip()
        with zipfile.ZipFile(os.path.join(self.tmp.name, name)) as z:
            return name, {n: z.read(n).decode("utf-8", "replace") for n in z.namelist()}

    def fake_protoc(self, version, python_version=""):
        """A protoc that says it is `version` and runs Debian's, adding the header protoc 26+
        writes when `python_version` is given."""
        path = os.path.join(self.tmp.name, "protoc")
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/usr/bin/python3
                import glob, subprocess, sys
                if sys.argv[1:] == ["--version"]:
                    print("libprotoc {version}")
                    sys.exit(0)
                subprocess.run(["/usr/bin/protoc"] + sys.argv[1:], check=True)
                out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--python_out=")][0]
                if {python_version!r}:
                    for p in glob.glob(out + "/kvtier/v1/*_pb2.py"):
                        text = open(p).read()
                        open(p, "w").write("# Protobuf Python Version: {python_version}\\n" + text)
                """))
        os.chmod(path, 0o755)
        return path

    def test_a_pure_wheel(self):
        name, files = self.wheel()
        self.assertEqual(name, f"kvtier-{project_version()}-py3-none-any.whl")
        info = f"kvtier-{project_version()}.dist-info"
        self.assertIn("kvtier/v1/cache_pb2_grpc.py", files)
        self.assertIn(f'__version__ = "{project_version()}"', files["kvtier/_version.py"])
        self.assertIn("Root-Is-Purelib: true", files[f"{info}/WHEEL"])
        requires = re.findall(r"^Requires-Dist: (.*)$", files[f"{info}/METADATA"], re.M)
        self.assertEqual(requires, ["grpcio>=1.32", "protobuf>=3.20", "xxhash"])
        record = files[f"{info}/RECORD"]
        self.assertEqual(sorted(ln.split(",")[0] for ln in record.splitlines()), sorted(files))

    def test_native_modules_make_a_platform_wheel(self):
        native = os.path.join(self.tmp.name, "native", "kvtier")
        os.makedirs(native)
        ext = backend("import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))").strip()
        with open(os.path.join(native, "_native" + ext), "wb") as f:
            f.write(b"\x7fELF not really")
        name, files = self.wheel({"native-dir": os.path.dirname(native)})
        impl = "cp%d%d" % sys.version_info[:2]
        self.assertRegex(name, rf"^kvtier-{project_version()}-{impl}-{impl}-linux_\w+\.whl$")
        self.assertIn("kvtier/_native" + ext, files)
        self.assertIn("Root-Is-Purelib: false",
                      files[f"kvtier-{project_version()}.dist-info/WHEEL"])

    def test_a_native_setting_it_does_not_know_is_refused(self):
        with self.assertRaisesRegex(AssertionError, "native: 'yes' is not cmake or off"):
            self.wheel({"native": "yes"})

    def test_stubs_of_a_newer_protoc_raise_the_protobuf_floor(self):
        _, files = self.wheel(env={"PROTOC": self.fake_protoc("27.2", "5.27.2")})
        requires = re.findall(r"^Requires-Dist: (.*)$",
                              files[f"kvtier-{project_version()}.dist-info/METADATA"], re.M)
        self.assertIn("protobuf>=5.27.2", requires)

    def test_a_protoc_too_old_is_refused_and_grpcio_tools_asked_for(self):
        env = {"PROTOC": self.fake_protoc("3.6")}
        self.assertEqual(backend("print(b.get_requires_for_build_wheel())", env).strip(),
                         "['grpcio-tools']")
        with self.assertRaisesRegex(AssertionError, "protoc must be 3.19 or newer"):
            self.wheel(env=env)
        self.assertEqual(backend("print(b.get_requires_for_build_wheel())").strip(), "[]")


if __name__ == "__main__":
    unittest.main()
