"""LTAU command: ``atomscore uq``, the force uncertainty of each atom from a training run's error logs."""

from __future__ import annotations

import numpy as np

from atomscore.cli import flags
from atomscore.cli.common import (attach, check_command_output, descriptor_settings, input_file, provenance,
                                  read_input_configs, reference_descriptors, stacked, stage, write_scored)


def cmd_uq(args):
    from atomscore.ltau import LTAUForcesUQScore

    configs_path = input_file(args.configs, "CONFIGS")
    train_path = input_file(args.train_descriptors, "--train-descriptors")
    logs_path = input_file(args.error_logs, "--error-logs")
    check_command_output(args, [configs_path, train_path, logs_path])
    configs = read_input_configs(configs_path, "CONFIGS")
    train, settings = reference_descriptors(train_path, configs, args, "--train-descriptors")
    configs = attach(configs, settings, args.descriptors_key)
    with stage(f"LTAU error PDFs and faiss index of {len(train)} training atoms", nbins=args.nbins,
               bin_spacing=args.bin_spacing, error_logs=logs_path):
        score = LTAUForcesUQScore(train_descriptors=train, error_pdfs=str(logs_path), from_error_logs=True,
                                  nbins=args.nbins, bin_spacing=args.bin_spacing)
    compute_args = {"descriptors_key": args.descriptors_key}
    if args.neighbors is not None:  # else the score's default
        compute_args["num_nearest_neighbors"] = args.neighbors
    k = {**score.compute_defaults(), **compute_args}["num_nearest_neighbors"]
    with stage(f"k-NN search of {sum(len(a) for a in configs)} atoms", neighbors=k):
        values = score.compute_batch(configs, "UNCERTAINTY", **compute_args)
    metadata = score.metadata_of(values)
    metadata.update(descriptors=provenance(settings, args.descriptors_key), train_descriptors=str(train_path),
                    error_logs=str(logs_path))
    path = write_scored(score, values, configs, metadata, args)
    print(f"{'config':>6} {'atoms':>6} {'mean UQ':>10} {'max UQ':>10}   (expected force error, eV/Å)")
    for i, uq in enumerate(values):
        mean = f"{np.mean(uq):>10.4g}" if len(uq) else f"{'-':>10}"
        top = f"{np.max(uq):>10.4g}" if len(uq) else f"{'-':>10}"
        print(f"{i:>6} {len(uq):>6} {mean} {top}")
    print(f"atomscore: wrote per-atom uncertainty (arrays['{score.result_key}']) of {len(values)} "
          f"configuration(s) to {path}")
    return 0


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
    flags.add_output(p, "uq.xyz")
    p.set_defaults(func=cmd_uq, flag_names={
        "num_nearest_neighbors": "--neighbors", "nbins": "--nbins", "bin_spacing": "--bin-spacing",
        "train_descriptors": "--train-descriptors", "error_pdfs": "--error-logs", "cutoff": "--cutoff", "k": "-k",
        "descriptors_key": "--descriptors-key"})
