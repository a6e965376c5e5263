"""Mutation check: put one known bug at a time into the source, run the tests that should see it, restore.

Each line says CAUGHT (and which tests failed) or MISSED.  The source is restored after each
mutant, also when a run is interrupted.  About two minutes on 2 cores.

    .venv/bin/python tools/mutation_check.py
"""
import pathlib
import subprocess
ROOT = pathlib.Path(__file__).resolve().parents[1]
MUTANTS = [
    ("normalize() shrinks every column 10,000x", "src/tinydancer/nn/data.py",
     "        stds = flat.std(axis=0)\n", "        stds = flat.std(axis=0) * 1e4\n", "tests/test_training.py tests/test_files.py"),
    ("normalized features divided by 10,000 (stds reported unchanged)", "src/tinydancer/nn/normalization.py",
     "        return ((x - self.means) / self.stds).astype(np.float32)", "        return ((x - self.means) / self.stds / 1e4).astype(np.float32)", "tests/test_training.py"),
    ("a watcher that never reads the files", "src/tinydancer/server/state.py",
     "        events = []\n        stat = self._stat()", "        events = []\n        return events\n        stat = self._stat()", "tests/test_learning.py tests/test_query_learning.py"),
    ("distillation without the T^2 factor", "src/tinydancer/nn/losses.py",
     "        per_sample = a * t * t * soft + (1.0 - a) * hard\n        dlogits = a * t * t * d_soft + (1.0 - a) * d_hard",
     "        per_sample = a * soft + (1.0 - a) * hard\n        dlogits = a * d_soft + (1.0 - a) * d_hard", "tests/test_training.py tests/test_model.py"),
    ("L2 on every parameter (biases, zeta, nu too)", "src/tinydancer/nn/training.py",
     "            w = model.flat * model.weight_mask()", "            w = model.flat.copy()", "tests/test_model.py tests/test_training.py"),
    ("a save that writes the target in place (not atomic)", "src/tinydancer/_io.py",
     "        os.replace(tmp, target)", "        target.write_bytes(data)\n        os.unlink(tmp)", "tests/test_files.py"),
    ("the router ignores the stored calibration scores", "src/tinydancer/candidates/uncertainty.py",
     "        return None if scores is None else cls(scores)", "        return None if scores is None else cls(np.linspace(0, 0.5, 200))", "tests/test_routing.py"),
]
for name, file, old, new, tests in MUTANTS:
    path = ROOT / file
    original = path.read_text()
    assert original.count(old) == 1, (name, old)
    path.write_text(original.replace(old, new))
    try:
        r = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *tests.split()],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        path.write_text(original)
    failed = [l for l in r.stdout.splitlines() if l.startswith("FAILED")]
    print(f"{'CAUGHT' if r.returncode else 'MISSED'}: {name}: " + (", ".join(f.split("::")[1].split(" ")[0] for f in failed) or r.stdout.strip().splitlines()[-1]))
