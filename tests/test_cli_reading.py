"""The command line as a researcher reads it (issue 26): numbers that explain themselves,
bandwidth/overlap/--example, and command-line manners (pipes, warnings, help, -v, wording).

Every command runs for real in a subprocess. References: the ``quests`` package
(``quests.entropy`` entropy, diversity, delta_entropy, get_bandwidth and its ``quests
bandwidth`` command), the score classes' own ``compute`` signatures, and the curve JSON
the same command writes.
"""

import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore.io import read_configs, write_data

ROOT = Path(__file__).resolve().parents[1]
H = 0.02
EPS = 1e-5  # quests' overlap threshold (nats)


def atomscore(*args, cwd, stdout=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if stdout is None:
        return subprocess.run([sys.executable, "-m", "atomscore.cli", *map(str, args)], cwd=cwd,
                              capture_output=True, text=True, env=env, timeout=300)
    return subprocess.Popen([sys.executable, "-m", "atomscore.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A pool of 10 labelled Si cells and a 2-cell reference, with k=8 descriptors attached."""
    from atomscore.quests.descriptor import QUESTSDescriptor

    folder = tmp_path_factory.mktemp("reading")
    desc = QUESTSDescriptor(cutoff=5.0, k=8)
    pool, ref = [], []
    for i in range(10):
        atoms = bulk("Si", "diamond", 5.30 + 0.03 * i, cubic=True)
        atoms.rattle(0.02 + 0.03 * (i % 3), seed=i)
        atoms.info["config_type"] = f"T{i % 3}"
        pool.append(atoms)
    for i in range(2):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.03, seed=20 + i)
        ref.append(atoms)
    pool, ref = desc.attach(pool, progress=False), desc.attach(ref, progress=False)
    write_data(folder / "pool.xyz", pool)
    write_data(folder / "ref.xyz", ref)
    return folder, pool, ref


def stacked(configs):
    return np.concatenate([a.arrays["descriptors"] for a in configs])


def test_entropy_says_what_its_values_mean(data):
    import quests.entropy as qe

    folder, pool, _ = data
    proc = atomscore("entropy", "pool.xyz", "-b", H, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    x = stacked(pool)
    # exp(D) is the effective number of distinct environments; exp(H) against N; efficiency H / log N
    diversity = qe.diversity(x, h=H)
    shown = float(re.search(r"exp\(D\) = ([0-9.e+]+): the effective number of distinct environments",
                            proc.stdout).group(1))
    assert shown == pytest.approx(math.exp(diversity), rel=1e-3)
    assert f"of N = {len(x)}" in proc.stdout and "H / log N" in proc.stdout
    # what the bandwidth means, and the volume rule's value for this dataset (quests' function)
    volume = sum(a.get_volume() for a in pool) / len(x)
    rule = float(re.search(r"volume rule gives ([0-9.]+)", proc.stdout).group(1))
    assert rule == pytest.approx(qe.get_bandwidth(volume), rel=1e-3)
    assert "count as the same" in proc.stdout


def test_dh_table_sorted_with_labels_top_and_the_negative_mean_explained(data):
    import quests.entropy as qe

    folder, pool, ref = data
    dh = [qe.delta_entropy(a.arrays["descriptors"], stacked(ref), h=H) for a in pool]
    for sort, value in (("mean", np.mean), ("count", lambda d: int(np.sum(d > 0)))):  # max: the default
        proc = atomscore("dh", "pool.xyz", "--reference", "ref.xyz", "-b", H, "-o", f"dh_{sort}.xyz", "--sort", sort,
                         "--top", 4, "--label", "config_type", cwd=folder)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:2] == ["config", "config_type"]
        rows = [line.split() for line in lines[1:5]]
        want = sorted(range(len(pool)), key=lambda i: (-value(dh[i]), i))[:4]
        assert [int(r[0]) for r in rows] == want, (sort, rows)
        assert [r[1] for r in rows] == [pool[i].info["config_type"] for i in want]
        assert f"the 4 of {len(pool)} configurations, ranked by" in proc.stdout
        assert "mean dH is negative" in proc.stdout
    proc = atomscore("dh", "pool.xyz", "--reference", "ref.xyz", "-o", "dh_bad.xyz", "--label", "nope", cwd=folder)
    assert proc.returncode == 2 and "--label: no configuration of TEST has info['nope']" in proc.stderr
    assert not (folder / "dh_bad.xyz").exists()


def test_select_prints_picks_and_overlap_before_and_after(data):
    import quests.entropy as qe

    folder, pool, ref = data
    proc = atomscore("select", "pool.xyz", "-n", 3, "--reference", "ref.xyz", "-b", H, "-o", "picked.xyz",
                     "--label", "config_type", "-vv", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    picked = read_configs(folder / "picked.xyz")
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["step", "pool", "index", "config_type"]
    for line, atoms in zip(lines[1:4], picked):
        step, index, label = line.split()[:3]
        assert int(index) == atoms.info["pool_index"] and label == pool[int(index)].info["config_type"]
    # before: the pool's environments the reference covers; after: reference + the picks (quests dH < eps)
    x, r = stacked(pool), stacked(ref)
    before = np.mean(qe.delta_entropy(x, r, h=H) < EPS)
    after = np.mean(qe.delta_entropy(x, np.concatenate([r, stacked(picked)]), h=H) < EPS)
    m = re.search(r"overlap with the pool: ([0-9.]+) before -> ([0-9.]+) after", proc.stdout)
    assert float(m.group(1)) == pytest.approx(before, abs=1e-4) and float(m.group(2)) == pytest.approx(after, abs=1e-4)
    m = re.search(r"entropy with the reference: ([0-9.]+) nats for reference \+ selection, against ([0-9.]+) for "
                  r"the reference alone and ([0-9.]+) for the whole pool", proc.stdout)
    assert float(m.group(1)) == pytest.approx(qe.entropy(np.concatenate([r, stacked(picked)]), h=H), abs=1e-4)
    assert float(m.group(2)) == pytest.approx(qe.entropy(r, h=H), abs=1e-4)
    assert float(m.group(3)) == pytest.approx(qe.entropy(x, h=H), abs=1e-4)
    assert "step 1: pool index" in proc.stderr  # -vv: every step
    assert re.search(r"select by entropy: done in [0-9.]+ s", proc.stderr)  # not a terminal: one line per stage


def test_curve_several_methods_reference_plot_only_and_milestones(data):
    folder, pool, _ = data
    proc = atomscore("curve", "pool.xyz", "--reference", "ref.xyz", "-b", H, "--method", "entropy,random",
                     "--plot", "curves.png", "--no-progress", cwd=folder)
    assert proc.returncode == 0, proc.stderr  # -o is optional with --plot
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = atomscore("curve", "pool.xyz", "--reference", "ref.xyz", "-b", H, "--method", "entropy,random",
                     "-o", "curves.json", "--no-progress", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    curves = json.loads((folder / "curves.json").read_text())["curves"]
    assert [c["method"] for c in curves] == ["entropy", "random"]
    for c in curves:
        # reference + selection is in the JSON (and plotted); milestones from the curve's own numbers
        assert len(c["entropy_with_reference"]) == len(c["n_configs"])
        for f in ("0.95", "0.99"):
            reached = [n for n, v in zip(c["n_configs"], c["overlap_with_reference"]) if v >= float(f)]
            assert c["milestones"]["overlap"][f] == (reached[0] if reached else None)
            target = float(f) * curves[0]["pool"]["diversity"]
            reached = [n for n, v in zip(c["n_configs"], c["diversity"]) if v >= target]
            assert c["milestones"]["diversity"][f] == (reached[0] if reached else None)
        n95 = c["milestones"]["overlap"]["0.95"]
        assert f"{c['method']}: the reference + selection covers 95% at {n95} configurations" in proc.stdout
    refused = atomscore("curve", "pool.xyz", cwd=folder)
    assert refused.returncode == 2 and "give -o/--output (JSON), --plot" in refused.stderr
    refused = atomscore("curve", "pool.xyz", "--method", "entropy,greedy", "-o", "x.json", cwd=folder)
    assert refused.returncode == 2 and "greedy" in refused.stderr and not (folder / "x.json").exists()


def test_bandwidth_is_the_quests_volume_rule(data, tmp_path):
    import quests.entropy as qe

    si = bulk("Si", "diamond", 5.43, cubic=True)
    write_data(tmp_path / "si.xyz", [si, bulk("Si", "diamond", 5.60, cubic=True)])
    proc = atomscore("bandwidth", "si.xyz", "--per-structure", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    v0 = si.get_volume() / len(si)
    assert out["per_config"][0]["bandwidth"] == pytest.approx(qe.get_bandwidth(v0), rel=1e-12)
    assert out["per_config"][0]["bandwidth"] == pytest.approx(0.0286, abs=1e-4)  # the number for Si
    v_all = (si.get_volume() + 5.60 ** 3) / 16
    assert out["bandwidth"] == pytest.approx(qe.get_bandwidth(v_all), rel=1e-12)
    # the quests command itself, on the same volume
    quests_cli = shutil.which("quests", path=str(Path(sys.executable).parent))
    if quests_cli:
        q = subprocess.run([quests_cli, "bandwidth", f"{v0:.6f}"], capture_output=True, text=True, timeout=120)
        want = float(re.search(r"h = ([0-9.]+)", q.stdout + q.stderr).group(1))
        mine = atomscore("bandwidth", "--volume", f"{v0:.6f}", cwd=tmp_path)
        assert float(re.search(r"h = ([0-9.]+)", mine.stdout).group(1)) == pytest.approx(want, abs=1e-4)
    cluster = bulk("Si", "diamond", 5.43, cubic=True)
    cluster.pbc = False
    write_data(tmp_path / "molecule.xyz", [cluster])
    proc = atomscore("bandwidth", "molecule.xyz", cwd=tmp_path)
    assert proc.returncode == 2 and "no periodic structure" in proc.stderr


def test_overlap_equals_quests(data):
    import quests.entropy as qe

    folder, pool, ref = data
    proc = atomscore("overlap", "pool.xyz", "ref.xyz", "-b", H, "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    want = np.mean(qe.delta_entropy(stacked(pool), stacked(ref), h=H) < EPS)
    assert json.loads(proc.stdout)["overlap"] == pytest.approx(want, abs=1e-12)
    text = atomscore("overlap", "pool.xyz", "ref.xyz", "-b", H, cwd=folder)
    assert text.returncode == 0 and f"overlap  {want:.4f}" in text.stdout and "Not symmetric" in text.stdout


def in_process(capsys, *args):
    """The command's main() in this process (cheap commands): exit code, stdout, stderr."""
    from atomscore.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_example_prints_a_template_of_every_score(data, capsys, monkeypatch):
    from atomscore.catalog import SCORE_TYPES, score_class

    folder, pool, ref = data
    monkeypatch.chdir(folder)
    code, out, _ = in_process(capsys, "run", "--example")
    assert code == 0 and out.split() == list(SCORE_TYPES)
    for name in SCORE_TYPES:
        code, out, err = in_process(capsys, "run", "--example", name)
        assert code == 0, err
        spec = json.loads(out)  # stdout is the JSON alone; what to replace goes to stderr
        assert spec["score"]["score_type"] == name and "replace" in err
        cls = score_class(name)
        accepted = set(inspect.signature(cls.compute).parameters) | set(inspect.signature(cls.compute_batch).parameters)
        assert set(spec["score"]["compute_args"]) <= accepted, name  # every key is an argument of the score
        inspect.signature(cls).bind(**spec["score"]["score_args"])
    # a template runs as printed once its files exist: dH against the reference, as quests gives it
    (folder / "spec.json").write_text(in_process(capsys, "run", "--example", "QUESTSDeltaEntropyScore")[1])
    shutil.copy(folder / "pool.xyz", folder / "configs.xyz")
    np.save(folder / "train_descriptors.npy", stacked(ref))
    proc = atomscore("run", "spec.json", "--root", "jobs", "-o", "dh_run.xyz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    import quests.entropy as qe

    for atoms, orig in zip(read_configs(folder / "dh_run.xyz"), pool):
        np.testing.assert_allclose(atoms.arrays["quests_delta_entropy_score"],
                                   qe.delta_entropy(orig.arrays["descriptors"], stacked(ref), h=0.015), atol=1e-8)
    table = atomscore("jobs", "status", "jobs", cwd=folder)
    assert table.returncode == 0 and re.search(r"^\s+job\s+state\s+exit\s+seconds\s+error$", table.stdout, re.M)
    code, _, err = in_process(capsys, "run", "--example", "NoSuchScore")
    assert code == 2 and "expected one of" in err


def test_manners_help_pipe_warnings_wording_and_verbose(data, capsys, monkeypatch):
    folder, pool, ref = data
    monkeypatch.chdir(folder)
    bare = atomscore(cwd=folder)
    assert bare.returncode == 0 and bare.stdout.startswith("usage: atomscore") and "examples:" in bare.stdout

    # a reader that is gone before we write: exit 0, nothing on stderr (was BrokenPipeError, exit 1)
    proc = atomscore("dh", "pool.xyz", "--reference", "ref.xyz", "-o", "dh_pipe.xyz", "-q", cwd=folder,
                     stdout=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Error" not in err, err

    # a library warning is one 'atomscore: warning:' line, no Python source line
    proc = atomscore("select", "pool.xyz", "-n", 10, "--reference", "pool.xyz", "-o", "all.xyz", "--no-progress",
                     cwd=folder)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warning) == 1 and warning[0].startswith("atomscore: warning: select: stopped after")
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr

    # the library's argument names never reach the user: flags instead
    code, _, err = in_process(capsys, "select", "pool.xyz", "-o", "none.xyz")
    assert code == 2 and "-n/--size" in err and "--atoms" in err, err
    assert "atoms=" not in err and "size:" not in err.replace("--size:", "")
    code, _, err = in_process(capsys, "select", "pool.xyz", "-n", 99, "-o", "none.xyz")
    assert code == 2 and err.startswith("atomscore: error: -n/--size: expected at most the 10"), err

    # -v: the settings resolved and the time of each stage; the default shows the stage lines only
    verbose = atomscore("entropy", "pool.xyz", "--cutoff", 5.0, "-k", 8, "-v", cwd=folder)
    assert re.search(r"QUESTS descriptors of 10 configuration\(s\), 80 atoms: cutoff 5.0 Å, k 8", verbose.stderr)
    assert re.search(r"kernel sums of 80 x 80 environments: done in [0-9.]+ s", verbose.stderr)
    assert re.search(r"kernel sums .*: bandwidth 0.015", verbose.stderr)
    plain = atomscore("entropy", "pool.xyz", cwd=folder)
    assert "bandwidth 0.015, dimension" not in plain.stderr and "done in" in plain.stderr
