"""LTAU command: ``atomscore uq``, the force uncertainty of each atom from a training run's error logs."""

from __future__ import annotations

import numpy as np

from atomscore.cli import flags
from atomscore.cli.common import (attach, check_command_output, input_file, naming, output_configs, provenance,
                                  read_input_configs, reference_descriptors, stage, write_scored)
from atomscore.errors import InputError
from atomscore.validation import check_finite_output, load_array, reference_forces


def cmd_uq(args):
    from atomscore.ltau import LTAUForcesUQScore

    configs_path = input_file(args.configs, "CONFIGS")
    train_path = input_file(args.train_descriptors, "--train-descriptors")
    logs_path = input_file(args.error_logs, "--error-logs")
    check_command_output(args, [configs_path, train_path, logs_path])
    if getattr(args, "calibration_plot", None) or getattr(args, "dh_reference", None):
        if not getattr(args, "reference_forces", None):
            raise InputError("--calibration-plot and --dh-reference need --reference-forces KEY (the true errors)")
    if getattr(args, "calibration_plot", None):  # refused now, not after the computation
        from atomscore.io import check_output
        from atomscore.ltau.calibration import PLOT_SUFFIXES

        check_output(args.calibration_plot, inputs=[configs_path, train_path, logs_path], what="--calibration-plot",
                     suffixes=PLOT_SUFFIXES)
    configs = read_input_configs(configs_path, "CONFIGS")
    scored = configs
    if getattr(args, "mace", None):  # the model's own descriptors of CONFIGS (the training side: a file holding them)
        from atomscore.ltau import mace

        scored = mace.attach(input_file(args.mace, "--mace"), configs, key=args.descriptors_key)
    train, settings = reference_descriptors(train_path, scored, args, "--train-descriptors",
                                            f"CONFIGS {str(configs_path)!r}")
    scored = attach(scored, settings, args.descriptors_key)
    logs = load_array(str(logs_path), "--error-logs", ndim=(2, 3))  # (epochs, N) norms or (epochs, N, 3) vectors
    with stage(f"LTAU error PDFs and faiss index of {len(train)} training atoms", nbins=args.nbins,
               bin_spacing=args.bin_spacing, error_logs=logs_path), \
            naming(f"--train-descriptors {str(train_path)!r} with --error-logs {str(logs_path)!r}"):
        score = LTAUForcesUQScore(train_descriptors=train, error_pdfs=logs, from_error_logs=True,
                                  error_logs_norm=logs.ndim == 3, nbins=args.nbins, bin_spacing=args.bin_spacing)
    compute_args = {"descriptors_key": args.descriptors_key}
    if args.neighbors is not None:  # else the score's default
        compute_args["num_nearest_neighbors"] = args.neighbors
    k = {**score.compute_defaults(), **compute_args}["num_nearest_neighbors"]
    with stage(f"k-NN search of {sum(len(a) for a in configs)} atoms", neighbors=k), \
            naming(f"CONFIGS {str(configs_path)!r}"):
        values = check_finite_output(score.compute_batch(scored, "UNCERTAINTY", **compute_args), "uncertainties")
    metadata = score.metadata_of(values)
    metadata.update(descriptors=provenance(settings, args.descriptors_key), train_descriptors=str(train_path),
                    error_logs=str(logs_path))
    calibration = None
    if getattr(args, "reference_forces", None):
        calibration = uq_calibration(args, score, scored, compute_args)
        metadata["calibration"] = calibration["ltau"]
    path = write_scored(score, values, output_configs(configs, scored, args), metadata, args)
    print(f"{'config':>6} {'atoms':>6} {'mean UQ':>10} {'max UQ':>10}   (expected force error, eV/Å)")
    for i, uq in enumerate(values):
        mean = f"{np.mean(uq):>10.4g}" if len(uq) else f"{'-':>10}"
        top = f"{np.max(uq):>10.4g}" if len(uq) else f"{'-':>10}"
        print(f"{i:>6} {len(uq):>6} {mean} {top}")
    print(f"atomscore: wrote per-atom uncertainty (arrays['{score.result_key}']) of {len(values)} "
          f"configuration(s) to {path}")
    if calibration is not None:
        print_calibration(calibration)
    return 0


def uq_calibration(args, score, configs, compute_args):
    """LTAU's calibration against ``--reference-forces`` and, with ``--dh-reference``, QUESTS dH's ranking.

    The cross-package comparison lives here, in the command line: the score packages never
    import each other.
    """
    from atomscore.ltau import calibration

    if getattr(args, "mace", None):
        from atomscore.ltau import mace

        predicted = mace.forces(args.mace, configs)
        errors = [np.linalg.norm(p - reference_forces(a, args.reference_forces, i), axis=1)
                  for i, (a, p) in enumerate(zip(configs, predicted))]
        source = f"predicted by --mace {args.mace}"
    else:
        errors = calibration.force_errors(configs, args.predicted_forces, args.reference_forces)
        source = f"arrays[{args.predicted_forces!r}] (or the file's calculator forces)"
    report, uq, pit = calibration.ltau_calibration(score, configs, errors, args.descriptors_key,
                                                   compute_args.get("num_nearest_neighbors"))
    out = {"ltau": dict(report, predicted_forces=source, reference_forces=args.reference_forces)}
    others = {}
    if getattr(args, "dh_reference", None):
        dh = dh_values(args, configs)
        out["dh"] = calibration.calibration_report(dh, errors)
        others["QUESTS dH"] = dh
    if getattr(args, "calibration_plot", None):
        out["plot"] = str(calibration.plot_calibration(args.calibration_plot, uq, errors, pit, others=others))
    return out


def dh_values(args, configs):
    """QUESTS dH (nats) of every atom of ``configs`` against ``--dh-reference`` (default QUESTS settings)."""
    from atomscore.cli.common import read_input_configs as read
    from atomscore.quests import QUESTSDeltaEntropyScore
    from atomscore.quests.defaults import DEFAULT_BANDWIDTH, DEFAULT_CUTOFF, DEFAULT_K
    from atomscore.quests.descriptor import QUESTSDescriptor

    descriptor = QUESTSDescriptor(cutoff=DEFAULT_CUTOFF, k=DEFAULT_K, key="quests_descriptors")
    reference = descriptor.attach(read(input_file(args.dh_reference, "--dh-reference"), "--dh-reference"),
                                  progress=False)
    x = np.concatenate([a.arrays["quests_descriptors"] for a in reference])
    queries = descriptor.attach(configs, progress=False)
    return QUESTSDeltaEntropyScore().compute_batch(queries, "DELTA_ENTROPY", reference_set=x,
                                                   descriptors_key="quests_descriptors", bandwidth=DEFAULT_BANDWIDTH)


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def print_calibration(calibration):
    """The calibration table of ``atomscore uq --reference-forces``."""
    ltau = calibration["ltau"]
    print(f"calibration on {ltau['n_atoms']} atoms in {ltau['n_configurations']} configuration(s) "
          f"(true errors |F_pred - F_ref|, mean {ltau['mean_error']:.4g} eV/Å; k = {ltau['num_nearest_neighbors']})")
    rows = [("LTAU", ltau)] + ([("QUESTS dH", calibration["dh"])] if "dh" in calibration else [])
    print(f"  {'':<10} {'Spearman/atom':>13} {'Spearman/config':>15} {'miscal. area':>12}")
    for name, r in rows:
        print(f"  {name:<10} {_fmt(r['spearman_atoms']):>13} {_fmt(r['spearman_configurations']):>15} "
              f"{_fmt(r.get('miscalibration_area')):>12}")
    within = ", ".join(f"{q:g}: {f:.3f}" for q, f in ltau["within_quantile"].items())
    print(f"  errors within LTAU's predicted q-quantile (ideal q): {within}")
    if "plot" in calibration:
        print(f"atomscore: wrote the calibration plot to {calibration['plot']}")


def add_uq_command(subparsers):
    """Register ``atomscore uq``."""
    p = subparsers.add_parser(
        "uq", help="LTAU force uncertainty of each atom from a training run's error logs",
        description="Write CONFIGS with the LTAU expected force error (eV/Å) of every atom, from the descriptors "
                    "of your training atoms and the force errors logged for them at each epoch of your "
                    "training (shape (epochs, n_train_atoms), in training-atom order). Descriptors are read "
                    "from the files, or QUESTS descriptors are computed with --cutoff and -k.",
        epilog="examples:\n"
               "  atomscore uq md.xyz --train-descriptors train.xyz --error-logs errors.npy -o uq.xyz\n"
               "  atomscore uq md.traj --train-descriptors train_descriptors.npy --error-logs errors.npy "
               "--neighbors 5 -o uq.db\n")
    p.add_argument("configs", help="configurations to score (any format ASE reads)")
    p.add_argument("--train-descriptors", required=True,
                   help="training configurations (their atoms in training order) or their (n, dim) descriptors "
                        "(.npy)")
    p.add_argument("--error-logs", required=True,
                   help="(epochs, n_train_atoms) force-error magnitudes in eV/Å logged during training (.npy)")
    p.add_argument("--neighbors", type=int, default=None,
                   help="training atoms averaged per query atom (default: that of LTAUForcesUQScore.compute)")
    p.add_argument("--nbins", type=int, default=100, help="histogram bins of the error logs (default 100)")
    p.add_argument("--bin-spacing", choices=("log", "linear"), default="log", help="bin spacing (default log)")
    flags.add_descriptor_settings(p)
    flags.add_keep_descriptors(p)
    flags.add_output(p, "uq.xyz")
    flags.add_mace_model(p, "the MACE model whose descriptors (and, with --reference-forces, forces) CONFIGS get")
    calib = p.add_argument_group("calibration against reference forces")
    calib.add_argument("--reference-forces", metavar="KEY",
                       help="atoms.arrays KEY of reference forces (eV/Å) in CONFIGS: report how the uncertainty "
                            "ranks and sizes the true errors (Spearman, miscalibration area, quantile coverage)")
    calib.add_argument("--predicted-forces", metavar="KEY", default="forces",
                       help="the model's forces in CONFIGS when no --mace is given (default 'forces': the "
                            "file's forces column)")
    calib.add_argument("--dh-reference", metavar="TRAIN",
                       help="training configurations: also rank the errors by QUESTS dH against them")
    calib.add_argument("--calibration-plot", metavar="FILE.png", help="write the calibration figure")
    p.set_defaults(func=cmd_uq, flag_names={
        "num_nearest_neighbors": "--neighbors", "nbins": "--nbins", "bin_spacing": "--bin-spacing",
        "train_descriptors": "--train-descriptors", "error_pdfs": "--error-logs", "cutoff": "--cutoff", "k": "-k",
        "descriptors_key": "--descriptors-key"})


# --------------------------------------------------------------------------- ltau-logs

def cmd_ltau_logs(args):
    """Error logs of a MACE run's checkpoints on its training configurations, with their order recorded."""
    from atomscore.io import check_output, write_json_atomic, write_npy_atomic
    from atomscore.ltau import mace

    train_path = input_file(args.train, "TRAIN")
    model_path = input_file(args.mace, "--mace")
    target = check_output(args.output, inputs=[train_path, model_path], overwrite=args.overwrite,
                          suffixes=(".npy",))
    sidecar = check_output(target.with_suffix(".json"), inputs=[train_path, model_path], overwrite=args.overwrite,
                           what="--output's record", suffixes=(".json",))
    paths = mace.checkpoints(args.checkpoints, tag=args.tag)
    configs = read_input_configs(train_path, "TRAIN")
    logs = mace.error_logs(model_path, paths, configs, forces_key=args.forces_key, batch_size=args.batch_size,
                           dtype="float32" if args.float32 else None)
    if args.norms:
        logs = np.linalg.norm(logs, axis=2)
    write_npy_atomic(target, logs, overwrite=args.overwrite)
    sizes = [len(a) for a in configs]
    write_json_atomic(sidecar, {
        "error_logs": target.name, "shape": list(logs.shape), "unit": "eV/Å",
        "values": "|F_model - F_reference|" if args.norms else "F_model - F_reference (x, y, z)",
        "atom_order": "configuration by configuration, atom by atom, as in the training file",
        "training_file": str(train_path), "n_atoms_per_configuration": sizes,
        "model": str(model_path), "forces_key": args.forces_key,
        "evaluated_in": "float32" if args.float32 else "the model's precision",
        "checkpoints": [p.name for p in paths], "epochs": [mace.checkpoint_epoch(p) for p in paths]})
    print(f"atomscore: wrote the force errors of {sum(sizes)} training atoms ({len(configs)} configurations) at "
          f"{len(paths)} epochs, shape {logs.shape}, eV/Å, to {target} (order and checkpoints: {sidecar})")
    return 0


def add_ltau_logs_command(subparsers):
    """Register ``atomscore ltau-logs``."""
    p = subparsers.add_parser(
        "ltau-logs", help="LTAU error logs of a MACE training run (every training atom at every epoch)",
        description="Evaluate every per-epoch checkpoint of a MACE run (mace_run_train --save_all_checkpoints "
                    "--keep_checkpoints) on the training configurations, batched, and write the force errors "
                    "(epochs, atoms, 3) in eV/Å as .npy, atoms in the training file's order, with a .json "
                    "record of that order, the checkpoints and their epochs.",
        epilog="examples:\n"
               "  atomscore ltau-logs train.xyz --mace run/model.model --checkpoints run/checkpoints "
               "--forces-key REF_forces -o errors.npy\n"
               "  atomscore uq test.xyz --mace run/model.model --train-descriptors train_descriptors.xyz "
               "--error-logs errors.npy -o uq.xyz\n")
    p.add_argument("train", help="the training configurations with reference forces (any format ASE reads)")
    flags.add_mace_model(p, "the trained MACE model (gives the architecture the checkpoints fill)", required=True)
    p.add_argument("--checkpoints", required=True, help="MACE's checkpoints folder (<work_dir>/checkpoints)")
    p.add_argument("--tag", help="the run's tag <name>_run-<seed> when the folder holds several runs")
    p.add_argument("--forces-key", default="forces",
                   help="atoms.arrays key of the reference forces (default 'forces': the file's forces column)")
    p.add_argument("--norms", action="store_true", help="write |error| (epochs, atoms) instead of vectors")
    p.add_argument("--batch-size", type=flags.int_at_least(1), default=32, help="configurations per model call")
    p.add_argument("--float32", action="store_true",
                   help="evaluate a float32 copy of the model: ~4x faster on a CPU, errors moved by ~1e-5 eV/Å")
    flags.add_output(p, "errors.npy", suffixes=".npy")
    p.set_defaults(func=cmd_ltau_logs)
