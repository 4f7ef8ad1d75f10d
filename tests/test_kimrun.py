"""KIMRun: OpenKIM-protocol tests the user brings, run without the KIM pipeline.

The tests run our own synthetic test/driver pair (tests/data/kimrun, no OpenKIM files): a
lattice-constant test through a Python test driver (the standard wrapper runner), and a
cohesive-energy test that queries the lattice constant from it (dependencies.edn). Both use
ASE's KIM calculator and scipy's brentq, so the built-in ElasticConstants property (our
kimpy code, our relaxation) is an independent reference.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kimpy")
pytest.importorskip("kim_edn")

from atomscore.errors import InputError, PotentialError  # noqa: E402
from atomscore.potentials.kim import KIMPotential  # noqa: E402
from atomscore.properties.elastic import ElasticConstants  # noqa: E402
from atomscore.properties.kimrun import KIMRun, local_query  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
DATA = Path(__file__).parent / "data" / "kimrun"
LATTICE = "AtomscoreLatticeConstantCubic_diamond_Si__TE_000000000001_000"
COHESIVE = "AtomscoreCohesiveEnergyFromQuery_diamond_Si__TE_000000000002_000"
ARGS = [
    {"test": [LATTICE], "prop": ["structure-cubic-crystal-npt"], "keys": ["a"], "units": ["angstrom"]},
    # short id without version, as dependencies.edn files write them; nm to check the conversion
    {"test": ["TE_000000000002"], "prop": ["cohesive-potential-energy-cubic-crystal"],
     "keys": ["a", "cohesive-potential-energy"], "units": ["nm", "eV"]},
]


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_kimrun_equals_builtin_property_installed_and_private_point(models_dir):
    before = _tree(DATA)
    run = KIMRun([str(DATA)], python_executable=sys.executable, get_test_result_args=ARGS)
    pot = KIMPotential(SW)
    builtin = ElasticConstants(lattice_param=5.43, lattice_type="diamond", elements=["Si"])
    for sigma in (None, 2.1):  # the installed model, then a parameter point (a private model)
        if sigma is not None:
            pot.set_parameter("sigma", [sigma])
        res = run.calculate_property(pot)
        ref = builtin.calculate_property(pot)
        # the dependency ran first; the point ran as a private model, the defaults as installed
        assert res["tests"] == [LATTICE, COHESIVE]
        if sigma is None:
            assert res["model_name"] == SW
        else:
            assert res["model_name"].startswith("SW_atomscore_") and res["model_name"] != SW
        (a,), = res["property_value"][0]
        (a_nm, ecoh), = res["property_value"][1]
        # independent reference: the built-in property (our kimpy code and relaxation)
        assert a == pytest.approx(ref["lattice_constant"], abs=1e-9)
        assert ecoh == pytest.approx(ref["cohesive_energy"], abs=1e-9)
        # the queried lattice constant reached the dependent test (metres in, nm out: 1 nm = 10 Å)
        assert a_nm == pytest.approx(a / 10.0, rel=1e-12)
        assert np.allclose(run.property_vector(pot), [a, a_nm, ecoh], rtol=1e-12)
    # sigma moved the lattice constant (the point was really used, not the installed model)
    assert a > 5.4309497784 + 1e-3
    assert _tree(DATA) == before  # the user's test folders are never written


def test_kimrun_with_a_model_built_from_param_files(tmp_path, models_dir):
    """A potential from model_driver + param_files runs the tests as its private model."""
    written = KIMPotential(SW)
    written.set_parameter("A", [16.3])
    (tmp_path / "files").mkdir()
    written._model.write_parameterized_model(str(tmp_path / "files"), "my_fit")
    pot = KIMPotential(SW, model_driver="SW__MD_335816936951_004", param_files=[str(tmp_path / "files" / "my_fit.params")])
    run = KIMRun([str(DATA)], python_executable=sys.executable, get_test_result_args=[ARGS[1]])
    res = run.calculate_property(pot)
    assert res["model_name"] == pot.private_model.name
    ref = ElasticConstants(lattice_param=5.43, elements=["Si"]).calculate_property(written)
    (a_nm, ecoh), = res["property_value"][0]
    assert ecoh == pytest.approx(ref["cohesive_energy"], abs=1e-9)  # A=16.3 from the file, not the installed A


def test_fim_property_through_kimrun_equals_elastic_constants(models_dir):
    from atomscore.fim import FIMPropertyScore

    spec = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}
    params = {"sigma": [["default"]]}
    dk = {"h": 1e-3, "method": "FD"}
    kimrun = {"init_args": {"target_property_type": "KIMRun",
                            "target_property_args": {"test_dirs": [str(DATA)], "python_executable": sys.executable}},
              "calculate_property_args": {"get_test_result_args": [ARGS[0]]}}
    elastic = {"init_args": {"target_property_type": "ElasticConstants",
                             "target_property_args": {"lattice_param": 5.43, "elements": ["Si"],
                                                      "fim_quantities": ["lattice_constant"]}}}
    s1 = FIMPropertyScore()
    f1 = s1.compute([kimrun], "SENSITIVITY", [[1e-4]], spec, params, derivative_kwargs=dk)
    s2 = FIMPropertyScore()
    f2 = s2.compute([elastic], "SENSITIVITY", [[1e-4]], spec, params, derivative_kwargs=dk)
    # the same finite differences of the same numbers: equal to round-off of a ~ 1e-12 Å / h
    assert np.allclose(s1.jacobian, s2.jacobian, rtol=1e-8, atol=1e-8)
    assert np.allclose(f1, f2, rtol=1e-7)
    assert s1.jacobian[0, 0] > 0.1  # a larger sigma, a larger crystal: the points really differed


def test_local_query_operators():
    docs = [{"property-id": "tag:x/property/structure-cubic-crystal-npt", "a": {"si-value": 5e-10},
             "meta": {"runner": {"kimcode": "A__TE_000000000001_000"}, "subject": {"kimcode": "M"}}},
            {"property-id": "tag:x/property/other", "a": {"si-value": 6e-10},
             "meta": {"runner": {"kimcode": "B__TE_000000000002_000"}, "subject": {"kimcode": "M"}}}]
    q = {"query": {"meta.subject.kimcode": "M", "property-id": {"$regex": "cubic"}}, "project": ["a.si-value"]}
    assert local_query(q, docs) == [5e-10]
    q = {"query": {"meta.runner.kimcode": {"$in": ["B__TE_000000000002_000"]}}, "project": ["a.si-value", "property-id"]}
    assert local_query(q, docs) == [[6e-10, "tag:x/property/other"]]
    assert len(local_query({"query": {"meta.subject.kimcode": "M"}, "limit": 1}, docs)) == 1
    with pytest.raises(InputError, match=r"\$where.*supported"):
        local_query({"query": {"a": {"$where": "1"}}}, docs)
    with pytest.raises(InputError, match="database"):
        local_query({"database": "obsolete", "query": {}}, docs)


def _copy_items(tmp_path):
    dst = tmp_path / "items"
    shutil.copytree(DATA, dst)
    return dst


def test_hostile_inputs(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        KIMRun([str(tmp_path / "missing")])
    with pytest.raises(InputError, match="no OpenKIM test folder"):
        KIMRun([str(tmp_path)])
    with pytest.raises(InputError, match="unknown key 'model'.*the potential's"):
        KIMRun([str(DATA)], get_test_result_args=[{**ARGS[0], "model": [SW]}])
    with pytest.raises(InputError, match="not among the items.*AtomscoreLatticeConstantCubic"):
        KIMRun([str(DATA)], get_test_result_args=[{**ARGS[0], "test": ["TE_999999999999"]}])
    with pytest.raises(InputError, match="units.*1 units"):
        KIMRun([str(DATA)], get_test_result_args=[{**ARGS[0], "units": ["angstrom", "eV"]}])
    with pytest.raises(InputError, match="unknown unit"):
        KIMRun([str(DATA)], get_test_result_args=[{**ARGS[0], "units": ["furlongs_per_blob"]}])
    with pytest.raises(InputError, match="python_executable"):
        KIMRun([str(DATA)], python_executable=str(tmp_path / "no-python"))


def test_get_test_result_in_a_template_equals_the_query(tmp_path, models_dir):
    """The template function get_test_result (a list per instance of the keys in the units
    asked) gives the dependent test the same lattice constant as the raw query."""
    items = _copy_items(tmp_path)
    tpl = items / COHESIVE / "pipeline.stdin.tpl"
    tpl.write_text('@< MODELNAME >@\n@< get_test_result(["TE_000000000001"], [MODELNAME], '
                   '["structure-cubic-crystal-npt"], ["a"], ["m"])[0] >@\n')
    pot = KIMPotential(SW)
    with_query = KIMRun([str(DATA)], python_executable=sys.executable, get_test_result_args=[ARGS[1]])
    with_get = KIMRun([str(items)], python_executable=sys.executable, get_test_result_args=[ARGS[1]])
    assert with_get.property_vector(pot) == pytest.approx(with_query.property_vector(pot), rel=1e-13)
    with pytest.raises(InputError, match="cannot render"):
        tpl.write_text("@< UNDEFINED_NAME >@\n")
        with_get.calculate_property(pot)


def test_cycle_failure_and_runner_errors(tmp_path, models_dir):
    items = _copy_items(tmp_path)
    pot = KIMPotential(SW)
    # a dependency cycle is refused before anything runs
    lat = items / LATTICE
    (lat / "dependencies.edn").write_text('["TE_000000000002"]')
    run = KIMRun([str(items)], python_executable=sys.executable, get_test_result_args=[ARGS[1]])
    with pytest.raises(InputError, match="dependency cycle"):
        run.calculate_property(pot)
    (lat / "dependencies.edn").unlink()
    # without python_executable a non-executable Python runner gets one clear error
    driver = items / "AtomscoreLatticeConstantCubic__TD_000000000001_000" / "runner"
    driver.chmod(0o644)
    with pytest.raises(InputError, match="not executable.*python_executable"):
        KIMRun([str(items)], get_test_result_args=[ARGS[0]]).calculate_property(pot)
    # a failing runner: its exit code and stderr tail in the message
    driver.write_text("#!/usr/bin/env python3\nimport sys\nsys.exit('driver says no')\n")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PotentialError, match="(?s)exit 1.*driver says no.*its folder"):
        KIMRun([str(items)], python_executable=sys.executable, get_test_result_args=[ARGS[0]],
               work_dir=str(work)).calculate_property(pot)
    # the failed run's folder is kept for a look: the rendered input is there
    rendered = list(work.glob(f"*/{LATTICE}/output/pipeline.stdin"))
    assert len(rendered) == 1 and rendered[0].read_text().splitlines()[1:3] == [SW, "Si"]


def test_inside_a_job_only_allowed_programs_run(monkeypatch):
    """Issue 21 (trust boundary) for KIMRun: inside a job, a test's runner and python_executable
    run only when on the allow-list (or named by the user's own process); outside a job they are
    recorded as named by the user. Reference: validation.check_executable_allowed's own rule."""
    import atomscore.validation as validation

    monkeypatch.setattr(validation, "_allowed_executables", set())  # as the runner sets it in a job
    with pytest.raises(InputError, match="not on your allow-list"):
        KIMRun([str(DATA)], python_executable=sys.executable, get_test_result_args=ARGS)
    allowed = {os.path.realpath(sys.executable)} | {os.path.realpath(p) for p in DATA.glob("*/runner")}
    monkeypatch.setattr(validation, "_allowed_executables", allowed)
    KIMRun([str(DATA)], python_executable=sys.executable, get_test_result_args=ARGS)
