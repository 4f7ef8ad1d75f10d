"""FIMTrainingSetScore's prepared finite-difference points and its forked workers (issue 27, item 4).

References: the serial computation (nprocs=1) for the forked one, which must give the same
numbers (the same code on the same inputs, in another process); ASE's KIM calculator with
a hand-written central difference (its own neighbour list, rebuilt at every call) where
the model's cutoff moves between points; the configuration index and the worker's
traceback for errors.
"""

import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("kimpy")

from ase.build import bulk  # noqa: E402

import atomscore.fim.evaluator as evaluator  # noqa: E402
import atomscore.fim.workers as workers  # noqa: E402
import atomscore.potentials.kim as kim  # noqa: E402
from atomscore.errors import InputError  # noqa: E402
from atomscore.fim.training_set import FIMTrainingSetScore, WorkerTraceback  # noqa: E402
from atomscore.fim.workers import _balance  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POT = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}
OPT = {p: [["default"]] for p in ("A", "B", "sigma", "gamma", "lambda")}


def mixed_batch():
    """Periodic cells of 8, 16 and 64 atoms and a 7-atom cluster, rattled."""
    rng = np.random.default_rng(7)
    out = []
    for rep in ((1, 1, 1), (2, 1, 1), (1, 1, 1), (2, 2, 2), (1, 2, 1), (1, 1, 1)):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(rep)
        a.positions += rng.normal(scale=0.08, size=a.positions.shape)
        out.append(a)
    c = bulk("Si", "diamond", a=5.43, cubic=True)[:7]
    c.positions += rng.normal(scale=0.08, size=c.positions.shape)
    c.pbc, c.cell = False, np.zeros((3, 3))
    out.insert(2, c)
    return out


def fims(configs, nprocs, **kwargs):
    args = {"potential": POT, "parameters_optimize": OPT, **kwargs}
    return FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", nprocs=nprocs, **args)


def test_balance_splits_by_atoms_and_keeps_every_index_once():
    sizes = [512] + [64] * 19 + [8] * 5
    configs = [np.zeros(n) for n in sizes]  # _balance only takes len()
    for head_start in (0, 100):
        groups = _balance(configs, 2, head_start)
        assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
        loads = [sum(sizes[i] + workers._CONFIG_COST_ATOMS for i in g) for g in groups]
        loads[0] += head_start  # the first group's (this process's) head start
        # LPT: the loads differ by no more than the cost of one of the smaller configurations
        assert abs(loads[0] - loads[1]) <= 64 + workers._CONFIG_COST_ATOMS
    assert _balance(configs[:3], 5) == [[0], [1], [2]]  # no empty groups
    assert _balance(configs[:3], 5, head_start=1000) == [[0], [1], [2]]  # the first group's is empty


@pytest.mark.parametrize("nprocs", [2, 3])
def test_forked_groups_equal_serial_with_mixed_sizes_quantities_and_masks(nprocs):
    configs = mixed_batch()
    rng = np.random.default_rng(3)
    quantities = ["forces", "energy", "forces", "stress", "forces", "energy", "forces"]
    masks = [(rng.random(3 * len(a)) > 0.4).astype(int) if q == "forces" else None
             for a, q in zip(configs, quantities)]
    evk = {f"compute_{q}": [x == q for x in quantities] for q in ("energy", "forces", "stress")}
    serial = fims(configs, 1, evaluate_kwargs=evk, list_of_mask=masks)
    forked = fims(configs, nprocs, evaluate_kwargs=evk, list_of_mask=masks)
    for i, (a, b) in enumerate(zip(serial, forked)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0, err_msg=f"configuration {i}")
        assert np.all(np.linalg.eigvalsh(a) > -1e-9 * np.abs(a).max())  # J^T J is PSD


def test_points_written_whole_equal_prepared_points(monkeypatch):
    """Past PATH_MAX_CHANGES the points are written as whole vectors (the old path): same numbers."""
    configs = mixed_batch()[:3]
    prepared = fims(configs, 1)
    monkeypatch.setattr(kim, "PATH_MAX_CHANGES", 0)
    assert evaluator._FIMEvaluator(POT, OPT, None, None)._path is None
    whole = fims(configs, 1)
    for a, b in zip(prepared, whole):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)


def ase_fim(atoms, params):
    """Independent FIM: ASE's KIM calculator, central differences with 10% steps."""
    from ase.calculators.kim import KIM

    calc = KIM(SW)
    x0 = np.array([calc.get_parameters(**{p: [0]})[p][1][0] for p in params])
    a = atoms.copy()
    a.calc = calc

    def f(x):
        calc.set_parameters(**{p: [[0], [float(v)]] for p, v in zip(params, x)})
        return a.get_forces().ravel()

    h = 0.1 * np.abs(x0)
    jac = np.stack([(f(x0 + h[i] * np.eye(len(x0))[i]) - f(x0 - h[i] * np.eye(len(x0))[i])) / (2 * h[i])
                    for i in range(len(x0))], axis=1)
    return jac.T @ jac


def test_a_cutoff_that_moves_between_points_on_several_configurations():
    """SW's 'cutoff' moves the influence distance at its points (neighbour lists rebuilt); A's
    points keep it: the points seen with the start's cutoffs are reused for the next
    configuration, the others never are."""
    params = ["A", "cutoff"]
    opt = {p: [["default"]] for p in params}
    batch = mixed_batch()
    configs = [batch[0], batch[2], batch[1]]  # 8 atoms periodic, a cluster, 16 atoms
    got = fims(configs, 1, parameters_optimize=opt)
    for a, g in zip(configs, got):
        np.testing.assert_allclose(g, ase_fim(a, params), rtol=1e-6)
    ev = evaluator._FIMEvaluator(POT, opt, None, None)
    ev.fim(configs[0], "forces", None)
    assert ev._path.same_cutoffs == {0, 1}  # A +- h; not cutoff +- h
    np.testing.assert_allclose(fims(configs, 2, parameters_optimize=opt)[1], got[1], rtol=1e-12, atol=0)



def test_without_fork_a_process_pool_gives_the_serial_fims(monkeypatch):
    """The path of platforms without fork (a ProcessPoolExecutor started with _worker_init),
    reached here by making the start-method test fail; its pool still forks, as Linux can."""
    import atomscore.fim.training_set as ts

    class NoFork:
        def __init__(self, real):
            self.real = real

        def get_start_method(self):
            return "spawn"

        def __getattr__(self, name):
            return getattr(self.real, name)

    real = workers._pool_context()
    monkeypatch.setattr(ts, "_pool_context", lambda: NoFork(real))
    used = []
    pooled = workers._pooled
    monkeypatch.setattr(ts, "_pooled", lambda *a: used.append(1) or pooled(*a))
    configs = mixed_batch()[:4]
    for a, b in zip(fims(configs, 1), fims(configs, 2)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    assert used == [1]

def test_a_point_out_of_bounds_is_refused_before_any_configuration():
    opt = {"A": [[15.28, 15.0, 15.5]], "B": [["default"]]}
    with pytest.raises(InputError, match=r"finite-difference point phi\[0\] \+ 1.528: A\[0\] = 16.8\d* is "
                                         r"outside its bounds \[15.0, 15.5\]"):
        fims(mixed_batch()[:2], 1, parameters_optimize=opt)


def worker_group_index(configs, nprocs=2):
    groups = _balance(configs, nprocs, workers._PARENT_COST_ATOMS)  # as _parallel splits them
    return groups[1][1]  # a configuration computed by the worker, not the first of its group


def test_an_error_in_a_worker_names_its_configuration_and_carries_the_traceback():
    workers.close_workers()
    configs = mixed_batch()
    k = worker_group_index(configs)
    bad = configs[k].copy()
    bad[0].symbol = "Cu"  # not covered by SW Si
    configs[k] = bad
    with pytest.raises(InputError, match=rf"configuration {k} asks for forces: .*species \['Cu'\]") as info:
        fims(configs, 2)
    assert workers._KEPT == []  # a worker that failed is not kept
    assert isinstance(info.value.__cause__, WorkerTraceback)
    assert "in worker process" in str(info.value.__cause__) and f"configuration {k}" in str(info.value.__cause__)
    # the same input, serially: the same message
    with pytest.raises(InputError, match=rf"configuration {k} asks for forces: .*species \['Cu'\]"):
        fims(configs, 1)


@pytest.fixture
def forks(monkeypatch):
    """The pids forked during the test (no worker kept from before)."""
    workers.close_workers()
    pids = []
    real = os.fork

    def fork():
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def reaped(pid):
    import threading

    for t in threading.enumerate():  # workers that sent everything are reaped by these threads
        if t.name.startswith("reap-"):
            t.join(timeout=10)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_worker_that_dies_is_named_with_its_configuration(monkeypatch, forks):
    configs = mixed_batch()
    k = worker_group_index(configs)
    real = evaluator._fim_of

    def dying(ev, i, *args):
        if i == k and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # as a driver's segfault or the OOM killer would
        return real(ev, i, *args)

    parent = os.getpid()
    monkeypatch.setattr(evaluator, "_fim_of", dying)
    with pytest.raises(RuntimeError, match=rf"worker process \d+ .*ended \(killed by signal SIGKILL\) "
                                           rf"before configuration {k}"):
        fims(configs, 2)
    assert forks and all(reaped(pid) for pid in forks)


def test_ctrl_c_in_the_parent_kills_and_reaps_the_workers_and_restores_the_potential(monkeypatch, forks):
    configs = mixed_batch()
    pot = kim.KIMPotential(SW)
    before = pot.get_parameters()
    real = evaluator._fim_of
    parent = os.getpid()

    def interrupted(ev, i, *args):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return real(ev, i, *args)

    monkeypatch.setattr(evaluator, "_fim_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", potential=pot, parameters_optimize=OPT, nprocs=3)
    assert len(forks) == 2 and all(reaped(pid) for pid in forks)
    for name, values in pot.get_parameters().items():
        np.testing.assert_array_equal(values, before[name])


def test_kept_workers_are_reused_and_follow_a_potential_changed_in_place(forks):
    """The second call forks nothing; a parameter changed in place reaches the kept worker
    (it opens a new model when the call's model differs). Reference: nprocs=1."""
    configs = mixed_batch()
    pot = kim.KIMPotential(SW)
    args = {"potential": pot, "parameters_optimize": {"B": [["default"]], "sigma": [["default"]]}}
    first = FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", nprocs=2, **args)
    assert len(forks) == 1 and [w.pid for w in workers._KEPT] == forks
    pot.set_parameter("A", 16.5)
    second = FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", nprocs=2, **args)
    serial = FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", nprocs=1, **args)
    assert len(forks) == 1 and [w.pid for w in workers._KEPT] == forks  # the same worker
    for i, (a, b) in enumerate(zip(serial, second)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0, err_msg=f"configuration {i}")
    assert not np.allclose(first[0], second[0], rtol=1e-3)  # A = 16.5 changed the FIM
    workers.close_workers()
    assert workers._KEPT == [] and all(reaped(pid) for pid in forks)


class Unpicklable:
    """An identity transform holding a lambda: a kept worker cannot be sent it."""

    def __init__(self):
        self.f = lambda x: np.asarray(x, dtype=float).copy()

    def transform(self, x):
        return self.f(x)

    def inverse_transform(self, x):
        return self.f(x)


def test_a_transform_that_cannot_be_pickled_goes_to_workers_forked_for_the_call(forks):
    configs = mixed_batch()
    serial = fims(configs, 1, transform=Unpicklable())
    forked = fims(configs, 3, transform=Unpicklable())
    assert len(forks) == 2 and workers._KEPT == []
    for a, b in zip(serial, forked):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    np.testing.assert_allclose(serial[0], fims(configs[:1], 1)[0], rtol=1e-12)  # identity: as no transform


def test_a_kept_worker_is_replaced_once_this_process_has_imported_more(monkeypatch, forks):
    """A worker forked before an import would import the module itself (issue 16): replaced."""
    import sys
    import types

    configs = mixed_batch()[:4]
    fims(configs, 2)
    monkeypatch.setitem(sys.modules, "atomscore_test_new_module", types.ModuleType("atomscore_test_new_module"))
    fims(configs, 2)
    assert len(forks) == 2 and [w.pid for w in workers._KEPT] == forks[1:]
    fims(configs, 2)
    assert len(forks) == 2
    workers.close_workers()


def test_points_after_a_moved_cutoff_are_still_seen_with_the_start_cutoffs():
    """'cutoff' first, then A: A's points come after neighbour lists rebuilt for the moved
    cutoff and still count as the start's cutoffs. Reference: ASE's KIM calculator."""
    params = ["cutoff", "A"]
    opt = {p: [["default"]] for p in params}
    configs = mixed_batch()[:2]
    ev = evaluator._FIMEvaluator(POT, opt, None, None)
    for a in configs:
        np.testing.assert_allclose(ev.fim(a, "forces", None), ase_fim(a, params), rtol=1e-6)
    assert ev._path.same_cutoffs == {2, 3}
    ev.restore()


def test_parameter_path_keeps_only_changes_and_restores_the_start():
    """Reference: the model's own parameter values (get_parameter) at each point."""
    pot = kim.KIMPotential(SW)
    start = {n: pot.get_parameter(n)[0] for n in ("A", "B")}
    points = [[16.0, start["B"]], [14.0, start["B"]], [start["A"], 0.7], [start["A"], 0.5]]
    path = pot.parameter_path([("A", 0), ("B", 0)], points)
    assert [len(step) for step in path.steps] == [1, 1, 2, 1]  # only what differs from the point before
    for k, point in enumerate(points):
        path.visit(k)
        assert [pot.get_parameter("A")[0], pot.get_parameter("B")[0]] == point
    assert len(path.back_last) == 1 < len(path.back)  # the last point leaves only B off its start
    path.restore(from_last=True)
    assert {n: pot.get_parameter(n)[0] for n in ("A", "B")} == start
    path.visit(0)  # from another point, every entry the path touches is written back
    path.restore()
    assert {n: pot.get_parameter(n)[0] for n in ("A", "B")} == start
    assert pot.parameter_path([("A", 0), ("B", 0)], points, limit=4) is None  # 5 changes > 4
    with pytest.raises(InputError, match=r"expected 2 finite parameter values, got 2 values with NaN/inf"):
        pot.parameter_path([("A", 0), ("B", 0)], [[np.nan, 1.0]])
    with pytest.raises(InputError, match=r"parameter .A.: extent 1 out of range"):
        pot.parameter_path([("A", 1)], [[1.0]])


def test_an_idle_or_dead_kept_worker_is_replaced(monkeypatch, forks):
    """Idle longer than KEEP_IDLE_S: replaced (it holds this process's memory as it was when
    forked); killed while idle: forgotten and replaced. Reference: nprocs=1's numbers."""
    configs = mixed_batch()[:4]
    serial = fims(configs, 1)
    fims(configs, 2)
    monkeypatch.setattr(workers, "KEEP_IDLE_S", 0.0)
    fims(configs, 2)  # the first worker was idle for more than 0 s
    monkeypatch.setattr(workers, "KEEP_IDLE_S", 60.0)
    assert len(forks) == 2 and [w.pid for w in workers._KEPT] == forks[1:]
    os.kill(forks[1], signal.SIGKILL)  # the next call notices (and reaps it)
    time.sleep(0.2)
    got = fims(configs, 2)
    assert len(forks) == 3 and [w.pid for w in workers._KEPT] == forks[2:]
    for a, b in zip(serial, got):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    workers.close_workers()
    assert all(reaped(pid) for pid in forks)


def test_a_kept_worker_reaped_by_someone_else_is_forgotten(forks):
    """An asyncio child watcher's waitpid(-1) may reap a kept worker that died: the next call
    must not trip over the missing child. Reference: nprocs=1's numbers."""
    configs = mixed_batch()[:4]
    fims(configs, 2)
    os.kill(forks[0], signal.SIGKILL)
    os.waitpid(forks[0], 0)  # as waitpid(-1) elsewhere would
    got = fims(configs, 2)
    assert len(forks) == 2
    for a, b in zip(fims(configs, 1), got):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    workers.close_workers()
