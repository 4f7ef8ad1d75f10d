"""Private portable KIM models: model_driver + param_files honoured, parameter points installed.

References: the installed model with the same parameters changed in place (kimpy, another
path to the same numbers) and ASE's own EAM calculator reading the same setfl file.
"""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kimpy")

from atomscore.errors import InputError  # noqa: E402
from atomscore.potentials.kim import ACCEPTED_ARGS, KIMPotential  # noqa: E402
from atomscore.potentials.portable import install_parameterized, models_on_path  # noqa: E402

W = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
EAM_DRIVER = "EAM_Dynamo__MD_120291908751_005"
SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


def write_setfl(path, params, embedding_scale=1.0):
    """A one-element setfl (eam/alloy) file from the tables of the installed EAM_Dynamo W model
    (its driver cannot write its parameters itself)."""
    f = params["embeddingData"] * embedding_scale
    with open(path, "w") as fh:
        fh.write("atomscore test\nW tables of the installed model\nembedding scaled\n1 W\n")
        fh.write(f"{len(f)} {float(params['deltaRho'][0])!r} {len(params['densityData'])} "
                 f"{float(params['deltaR'][0])!r} {float(params['cutoff'][0])!r}\n74 183.84 3.1652 bcc\n")
        for arr in (f, params["densityData"], params["rPhiData"]):
            for k in range(0, len(arr), 5):
                fh.write(" ".join(repr(float(x)) for x in arr[k:k + 5]) + "\n")


def test_eam_param_files_are_honoured(tmp_path, models_dir):
    from ase.build import bulk
    from ase.calculators.eam import EAM

    installed = KIMPotential(W)
    params = installed.get_parameters()
    fitted = tmp_path / "W_fitted.eam.alloy"
    write_setfl(fitted, params, embedding_scale=1.1)  # "the user's fitted file"
    atoms = bulk("W", "bcc", 3.17, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    e_installed = installed.compute(atoms)["energy"]

    pot = KIMPotential.from_spec({"potential_type": "KIM", "potential_args": {
        "kim_id": W, "model_driver": EAM_DRIVER, "param_files": [str(fitted)], "species": ["W"]}})
    e_user = pot.compute(atoms, forces=True)
    # reference 1: the installed model with the same tables set in place (another path, same driver)
    installed.set_parameter("embeddingData", params["embeddingData"] * 1.1)
    e_inplace = installed.compute(atoms, forces=True)
    assert e_user["energy"] == pytest.approx(e_inplace["energy"], rel=1e-12)
    assert np.allclose(e_user["forces"], e_inplace["forces"], rtol=1e-10, atol=1e-12)
    # reference 2: ASE's own EAM implementation reading the same file (its own splines)
    ref = atoms.copy()
    ref.calc = EAM(potential=str(fitted))
    assert e_user["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    # the file was not dropped: the installed model's energy is far away
    assert abs(e_user["energy"] - e_installed) > 1.0

    spec = pot.to_spec()["potential_args"]
    digest = spec["param_files_digest"]
    assert len(digest) == 64 and pot.private_model.digest == digest
    assert pot.private_model.name in os.listdir(models_dir)
    # re-created from its spec (as a job does): the cached model, the same numbers
    again = KIMPotential.from_spec(pot.to_spec())
    assert again.compute(atoms)["energy"] == e_user["energy"]
    # the file changed since its digest was recorded: refused, not silently another model
    write_setfl(fitted, params, embedding_scale=1.2)
    with pytest.raises(InputError, match="changed since"):
        KIMPotential.from_spec(pot.to_spec())


def test_fim_metadata_records_the_digest(tmp_path, models_dir):
    from ase.build import bulk

    from atomscore.fim import FIMTrainingSetScore

    installed = KIMPotential(W)
    f = tmp_path / "W.eam.alloy"
    write_setfl(f, installed.get_parameters(), embedding_scale=0.9)
    spec = {"potential_type": "KIM", "potential_args": {"kim_id": W, "model_driver": EAM_DRIVER,
                                                         "param_files": [str(f)]}}
    atoms = bulk("W", "bcc", 3.17, cubic=True)
    atoms.rattle(0.05, seed=1)
    score = FIMTrainingSetScore()
    user = score.compute_batch([atoms], "SENSITIVITY", potential=spec, parameters_optimize={"deltaRho": [["default"]]})
    assert "_metadata" not in atoms.info  # never written into the caller's atoms
    base = FIMTrainingSetScore().compute_batch([atoms], "SENSITIVITY", potential={
        "potential_type": "KIM", "potential_args": {"kim_id": W}}, parameters_optimize={"deltaRho": [["default"]]})
    assert not np.allclose(user[0], base[0], rtol=1e-3)  # the user's tables gave another FIM
    recorded = user.metadata["potential"]["potential_args"]
    assert recorded["param_files_digest"] == KIMPotential.from_spec(spec).private_model.digest
    assert recorded["param_files"] == [str(f)] and recorded["model_driver"] == EAM_DRIVER


def test_parameter_point_installed_privately(tmp_path, models_dir):
    from ase.build import bulk

    pot = KIMPotential(SW)
    pot.set_parameters({"A": [16.2], "sigma": [2.11]})
    model = install_parameterized(pot, tmp_path / "collection")
    same = install_parameterized(pot, tmp_path / "collection")  # the same point: built once
    assert same.name == model.name and model.name.startswith("SW_atomscore_")
    so = next((tmp_path / "collection" / model.name).glob("*.so"))
    mtime = so.stat().st_mtime_ns
    install_parameterized(pot, tmp_path / "collection")
    assert so.stat().st_mtime_ns == mtime
    with models_on_path(model.collection):
        private = KIMPotential(model.name)
    atoms = bulk("Si", "diamond", 5.45, cubic=True)
    atoms.rattle(0.05, seed=2)
    # reference: the installed model with the parameters set in place
    assert private.compute(atoms)["energy"] == pytest.approx(pot.compute(atoms)["energy"], rel=1e-13)
    assert private.get_parameter("A")[0] == pytest.approx(16.2, rel=1e-15)
    # outside models_on_path the private model is not visible to this process
    with pytest.raises(Exception, match="not installed"):
        KIMPotential(model.name)


def test_unknown_and_inconsistent_potential_args(tmp_path):
    with pytest.raises(InputError) as err:
        KIMPotential.from_spec({"potential_type": "KIM", "potential_args": {"kim_id": SW, "param_file": "x"}})
    msg = str(err.value)
    assert "'param_file'" in msg and all(k in msg for k in ACCEPTED_ARGS)
    # the reference's keys with no meaning here are accepted and kept
    pot = KIMPotential(SW, checkpoint_name="potential", model_driver="SW__MD_335816936951_004")
    assert pot.to_spec()["potential_args"]["checkpoint_name"] == "potential"
    with pytest.raises(InputError, match="need 'model_driver'"):
        KIMPotential(SW, param_files=[str(tmp_path / "x.params")])
    with pytest.raises(InputError, match="no such file"):
        KIMPotential(SW, model_driver="SW__MD_335816936951_004", param_files=[str(tmp_path / "x.params")])
    with pytest.raises(InputError, match="not installed.*SW__MD_335816936951_004"):
        KIMPotential(SW, model_driver="SW__MD_335816936951_999", param_files=[str(tmp_path / "x.params")])


def test_two_processes_building_the_same_model(tmp_path):
    """Two processes building the same files into one cache: both get the model, built once."""
    import subprocess
    import sys

    pot = KIMPotential(SW)
    pot.set_parameter("A", [15.9])
    (tmp_path / "src").mkdir()
    pot._model.write_parameterized_model(str(tmp_path / "src"), "shared_point")
    params = str(tmp_path / "src" / "shared_point.params")
    code = ("import sys; from atomscore.potentials.portable import install_from_files; "
            "print(install_from_files('SW__MD_335816936951_004', [sys.argv[1]], sys.argv[2]).name)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", code, params, str(tmp_path / "cache")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    names = {o[0].strip() for o in outs}
    assert len(names) == 1
    assert sorted(os.listdir(tmp_path / "cache")) == [names.pop()]  # no half-built or temporary folder left
