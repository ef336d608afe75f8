"""The examples of python/README.md, exactly as written there, against scripts/local-cluster.sh.

Every ```python block after a line naming this file is run (twice: the second run finds what the
first stored) with the cluster's cluster.env in its environment, as the README says to run it.

Run by ctest as: /usr/bin/python3 -m unittest (PYTHONPATH=build/python, KVTIER_BINARY_DIR and
KVTIER_SOURCE_DIR set).
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.environ.get("KVTIER_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(SOURCE, "python", "README.md")
CLUSTER = os.path.join(SOURCE, "scripts", "local-cluster.sh")


def examples():
    """The README's tested examples, in order."""
    with open(README) as f:
        text = f.read()
    return re.findall(r"^<!-- tests/python/test_readme\.py runs this example[^\n]*-->\n"
                      r"```python\n(.*?)^```$", text, re.M | re.S)


class ReadmeExamples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = os.path.join(cls.tmp.name, "cluster")
        # As the README starts it, in a directory of this test's own.
        p = subprocess.run(["bash", CLUSTER, "--dir", cls.dir, "start"], stdout=subprocess.PIPE,
                           text=True, timeout=120)
        if p.returncode != 0:
            cls.tmp.cleanup()
            raise RuntimeError(f"local-cluster.sh start exited {p.returncode}")
        with open(os.path.join(cls.dir, "cluster.env")) as f:  # set -a; . cluster.env
            cls.env = dict(ln.strip().split("=", 1) for ln in f if "=" in ln)

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["bash", CLUSTER, "--dir", cls.dir, "stop"], check=False)
        cls.tmp.cleanup()

    def run_example(self, code):
        path = os.path.join(self.tmp.name, "example.py")
        with open(path, "w") as f:
            f.write(code)
        p = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=120,
                           cwd=self.tmp.name, env={**os.environ, **self.env})
        self.assertEqual(p.returncode, 0, f"{code}\n{p.stderr}")
        return p.stdout

    def test_the_examples(self):
        found = examples()
        self.assertEqual(len(found), 2, "the README's tested examples")
        blocking, aio = found
        self.assertEqual(self.run_example(blocking), "0 of 6 blocks were cached; now 6 are\n")
        self.assertEqual(self.run_example(blocking), "6 of 6 blocks were cached; now 6 are\n")
        self.assertEqual(self.run_example(aio), "cached blocks per prompt: [0, 0, 0]\n")
        self.assertEqual(self.run_example(aio), "cached blocks per prompt: [4, 4, 4]\n")


if __name__ == "__main__":
    unittest.main()
