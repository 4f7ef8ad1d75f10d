"""One-step commands from structure files: ``atomscore entropy``, ``atomscore dh``, ``atomscore uq``.

Each reads configurations in any format ASE reads, computes QUESTS descriptors where the
file holds none (``--cutoff``, ``-k``), computes the score in this process and writes
(``dh``, ``uq``) or prints (``entropy``) the result with the settings that define it. The
output is checked before anything is computed (see :func:`atomscore.io.check_output`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from atomscore.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_CUTOFF = 5.0
DEFAULT_K = 32


# --------------------------------------------------------------------------- shared steps

def _input_file(path, what) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {str(path)!r}")
    return path


def _read_configs(path, what):
    from atomscore.io import read_configs

    configs = read_configs(_input_file(path, what), what)
    if not configs:
        raise InputError(f"{what}: {str(path)!r} holds no configurations")
    return configs


def _has_descriptors(configs, key) -> bool:
    return all(key in atoms.arrays for atoms in configs)


def _descriptor_settings(args, *configs_lists):
    """Use the files' ``arrays[key]`` when all have them and no setting was asked; else compute."""
    asked = args.cutoff is not None or args.k is not None
    if not asked and all(_has_descriptors(c, args.descriptors_key) for c in configs_lists):
        return None
    return {"cutoff": DEFAULT_CUTOFF if args.cutoff is None else args.cutoff,
            "k": DEFAULT_K if args.k is None else args.k}


def _attach(configs, settings, key):
    """Configurations with QUESTS descriptors in ``arrays[key]`` (copies when computed)."""
    if settings is None:
        return configs
    from atomscore.descriptors.quests import QUESTSDescriptor

    descriptor = QUESTSDescriptor(cutoff=settings["cutoff"], k=settings["k"], key=key)
    log.info("computing QUESTS descriptors (cutoff %s Å, k %s) of %d configuration(s)", settings["cutoff"],
             settings["k"], len(configs))
    return descriptor.attach(configs, progress=None)


def _provenance(settings, key):
    if settings is None:
        return {"source": f"arrays[{key!r}] of the input files"}
    return {"source": "computed by quests", "cutoff": settings["cutoff"], "k": settings["k"]}


def _stacked(configs, key, what):
    from atomscore.validation import per_atom_array

    blocks = [per_atom_array(atoms, key, index=i, name=what) for i, atoms in enumerate(configs)]
    return np.concatenate(blocks, axis=0)


def _descriptor_array(path, what):
    """An ``(n, dim)`` descriptor array from a ``.npy``/``.txt`` file."""
    from atomscore.validation import load_array

    return load_array(str(path), what, ndim=2)


def _reference_descriptors(path, configs, args, what):
    """Descriptors of a reference (``.npy``, or configurations) and the settings used for both sides.

    A configurations file gets the same descriptor settings as ``configs``: both are read from
    the files when both hold descriptors and no setting was asked, else both are computed.
    """
    if path.suffix.lower() in (".npy", ".txt"):
        return _descriptor_array(path, what), _descriptor_settings(args, configs)
    ref_configs = _read_configs(path, what)
    settings = _descriptor_settings(args, configs, ref_configs)
    return _stacked(_attach(ref_configs, settings, args.descriptors_key), args.descriptors_key, what), settings


def _write(score, results, configs, metadata, args):
    from atomscore.io import write_data

    data = score.parse_for_storage(results, configs, metadata=metadata)
    path = write_data(args.output, data)
    log.info("wrote %d configuration(s) with arrays[%r] to %s", len(data), score.result_key, path)
    return path


def _check_output(args, inputs):
    from atomscore.io import check_output

    return check_output(args.output, inputs=inputs, overwrite=args.overwrite)


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"expected a positive number, got {text!r}")
    return value


def _positive_arg(text):
    import argparse

    try:
        return _positive(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_arg(minimum):
    import argparse

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_arg(2)  # a sample needs two rows for its standard error
_nonnegative_int = _int_arg(0)


def _add_descriptor_flags(p):
    p.add_argument("--cutoff", type=_positive_arg, default=None,
                   help=f"QUESTS descriptor cutoff in Å (default {DEFAULT_CUTOFF}); given, descriptors are "
                        "computed even when the file holds some")
    p.add_argument("-k", type=int, default=None, dest="k",
                   help=f"QUESTS neighbours per environment (default {DEFAULT_K})")
    p.add_argument("--descriptors-key", default="descriptors",
                   help="atoms.arrays key of the descriptors, read or written (default 'descriptors')")


def _add_bandwidth_flag(p):
    from atomscore.quests import DEFAULT_BANDWIDTH

    p.add_argument("-b", "--bandwidth", type=_positive_arg, default=DEFAULT_BANDWIDTH,
                   help=f"kernel bandwidth h in descriptor units (default {DEFAULT_BANDWIDTH}, as quests)")


def _add_output_flags(p, example):
    p.add_argument("-o", "--output", required=True,
                   help=f"output file, format by suffix: .xyz/.extxyz, .traj, .db or .json (e.g. {example})")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


# --------------------------------------------------------------------------- entropy

def dataset_information(args) -> dict:
    """Entropy, diversity and efficiency of ``args.dataset`` with the settings that define them."""
    from atomscore.kernels.gaussian import dataset_information as information

    configs = _read_configs(args.dataset, "DATASET")
    settings = _descriptor_settings(args, configs)
    configs = _attach(configs, settings, args.descriptors_key)
    x = _stacked(configs, args.descriptors_key, "DATASET")
    if len(x) < 2:
        raise InputError(f"DATASET: {str(args.dataset)!r} has {len(x)} atomic environment(s); the efficiency "
                         "H / log N needs at least 2")
    result = {"units": {"entropy": "nats", "diversity": "nats", "efficiency": "dimensionless (entropy / log N)"},
              "n_environments": int(len(x)), "n_configurations": len(configs), "bandwidth": args.bandwidth,
              "descriptors": _provenance(settings, args.descriptors_key), "dataset": str(args.dataset)}
    if args.sample is None:
        info = information(x, args.bandwidth)
        values = {"entropy": float(info.entropy), "diversity": float(info.diversity),
                  "efficiency": float(info.efficiency)}
    else:
        from atomscore.kernels.gaussian import estimate_information

        estimates = estimate_information(x, args.bandwidth, sample_size=args.sample, seed=args.seed)
        values = {name: float(e.value) for name, e in estimates.items()}
        values["standard_error"] = {name: float(e.standard_error) for name, e in estimates.items()}
        result.update(sample_size=min(args.sample, len(x)), seed=args.seed)
    return {**values, **result}


def cmd_entropy(args):
    result = dataset_information(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    se = result.get("standard_error")
    pm = {name: f" ± {se[name]:.2g} (standard error, {result['sample_size']} sampled rows)" if se else ""
          for name in ("entropy", "diversity", "efficiency")}
    print(f"entropy     {result['entropy']:.6g} nats{pm['entropy']}")
    print(f"diversity   {result['diversity']:.6g} nats{pm['diversity']}")
    print(f"efficiency  {result['efficiency']:.6g} (entropy / log N, dimensionless){pm['efficiency']}")
    desc = result["descriptors"]
    where = f"cutoff {desc['cutoff']} Å, k {desc['k']}" if "cutoff" in desc else desc["source"]
    print(f"settings    N = {result['n_environments']} environments in {result['n_configurations']} "
          f"configuration(s), bandwidth {result['bandwidth']}, descriptors: {where}")
    return 0


def add_entropy_command(subparsers):
    """Register ``atomscore entropy``."""
    p = subparsers.add_parser(
        "entropy", help="QUESTS entropy, diversity and efficiency of a dataset",
        description="Print the QUESTS information entropy H (nats), diversity (nats) and efficiency H / log N "
                    "of all atomic environments of DATASET (computed as the quests package does). "
                    "Descriptors are read from the file, or computed with --cutoff and -k.",
        epilog="examples:\n"
               "  atomscore entropy train.xyz\n"
               "  atomscore entropy train.traj -b 0.02 --cutoff 4.5 -k 24\n"
               "  atomscore entropy train.db --json > information.json\n"
               "  atomscore entropy big.xyz --sample 2000 --seed 1   # estimate with its standard error\n")
    p.add_argument("dataset", help="configurations (any format ASE reads)")
    _add_bandwidth_flag(p)
    _add_descriptor_flags(p)
    p.add_argument("--sample", type=_positive_int, default=None, metavar="N",
                   help="estimate from N sampled environments' kernel sums against all (cost N x all), "
                        "printed with its standard error (default: exact)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed of --sample (default 0)")
    p.add_argument("--json", action="store_true", help="print the values and settings as JSON")
    p.set_defaults(func=cmd_entropy)


# --------------------------------------------------------------------------- dh

def cmd_dh(args):
    from atomscore.quests import QUESTSDeltaEntropyScore

    test_path = _input_file(args.test, "TEST")
    ref_path = _input_file(args.reference, "--reference")
    _check_output(args, [test_path, ref_path])
    configs = _read_configs(test_path, "TEST")
    reference, settings = _reference_descriptors(ref_path, configs, args, "--reference")
    configs = _attach(configs, settings, args.descriptors_key)
    score = QUESTSDeltaEntropyScore()
    compute_args = {"reference_set": reference, "descriptors_key": args.descriptors_key,
                    "bandwidth": args.bandwidth}
    values = score.compute_batch(configs, "DELTA_ENTROPY", **compute_args)
    metadata = score.get_metadata("DELTA_ENTROPY", **compute_args)
    metadata.update(descriptors=_provenance(settings, args.descriptors_key), reference=str(ref_path),
                    n_reference=int(len(reference)))
    path = _write(score, values, configs, metadata, args)
    print(f"{'config':>6} {'atoms':>6} {'mean dH':>10} {'max dH':>10} {'dH > 0':>7}   (nats; dH > 0: "
          "environments the reference lacks)")
    for i, dh in enumerate(values):
        if len(dh):
            print(f"{i:>6} {len(dh):>6} {np.mean(dh):>10.4g} {np.max(dh):>10.4g} {int(np.sum(dh > 0)):>7}")
        else:
            print(f"{i:>6} {0:>6} {'-':>10} {'-':>10} {0:>7}")
    print(f"atomscore: wrote per-atom dH (arrays['{score.result_key}']) of {len(values)} configuration(s) "
          f"to {path}")
    return 0


def add_dh_command(subparsers):
    """Register ``atomscore dh``."""
    p = subparsers.add_parser(
        "dh", help="QUESTS delta entropy of each atom against a reference set",
        description="Write TEST with the QUESTS delta entropy dH (nats) of every atom against the environments "
                    "of --reference (large dH: environments the reference lacks) and print a summary per "
                    "configuration. Descriptors are read from the files, or computed with --cutoff and -k.",
        epilog="examples:\n"
               "  atomscore dh candidates.xyz --reference train.xyz -o dh.xyz\n"
               "  atomscore dh md.traj --reference train.db -b 0.02 -o dh.db\n"
               "  atomscore dh candidates.xyz --reference train_descriptors.npy -o dh.xyz --overwrite\n")
    p.add_argument("test", help="configurations to score (any format ASE reads)")
    p.add_argument("--reference", required=True,
                   help="reference configurations (any format ASE reads) or their (n, dim) descriptors (.npy)")
    _add_bandwidth_flag(p)
    _add_descriptor_flags(p)
    _add_output_flags(p, "dh.xyz")
    p.set_defaults(func=cmd_dh)


# --------------------------------------------------------------------------- uq

def cmd_uq(args):
    from atomscore.ltau import LTAUForcesUQScore

    configs_path = _input_file(args.configs, "CONFIGS")
    train_path = _input_file(args.train_descriptors, "--train-descriptors")
    logs_path = _input_file(args.error_logs, "--error-logs")
    _check_output(args, [configs_path, train_path, logs_path])
    configs = _read_configs(configs_path, "CONFIGS")
    train, settings = _reference_descriptors(train_path, configs, args, "--train-descriptors")
    configs = _attach(configs, settings, args.descriptors_key)
    score = LTAUForcesUQScore(train_descriptors=train, error_pdfs=str(logs_path), from_error_logs=True,
                              nbins=args.nbins, bin_spacing=args.bin_spacing)
    compute_args = {"descriptors_key": args.descriptors_key, "num_nearest_neighbors": args.neighbors}
    values = score.compute_batch(configs, "UNCERTAINTY", **compute_args)
    metadata = score.get_metadata("UNCERTAINTY", **compute_args)
    metadata.update(descriptors=_provenance(settings, args.descriptors_key), train_descriptors=str(train_path),
                    error_logs=str(logs_path))
    path = _write(score, values, configs, metadata, args)
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
    p.add_argument("--neighbors", type=int, default=1, help="training atoms averaged per query atom (default 1)")
    p.add_argument("--nbins", type=int, default=100, help="histogram bins of the error logs (default 100)")
    p.add_argument("--bin-spacing", choices=("log", "linear"), default="log", help="bin spacing (default log)")
    _add_descriptor_flags(p)
    _add_output_flags(p, "uq.xyz")
    p.set_defaults(func=cmd_uq)
