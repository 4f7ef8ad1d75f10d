"""QUESTS commands: ``atomscore descriptors``, ``atomscore entropy`` and ``atomscore dh``.

Each reads configurations in any format ASE reads, computes QUESTS descriptors where the
file holds none (``--cutoff``, ``-k``), computes in this process and writes or prints the
result with the settings that define it; outputs are checked before anything is computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from atomscore.cli import flags
from atomscore.cli.common import (attach, check_command_output, descriptor_settings, input_file, provenance,
                                  read_input_configs, reference_descriptors, stacked, write_scored)
from atomscore.errors import InputError
from atomscore.validation import check_positive


def cmd_descriptors(args):
    """Read ``args.input``, attach descriptors, write ``args.output`` (format by its suffix)."""
    from atomscore.io import check_output, read_configs, write_data
    from atomscore.quests.descriptor import QUESTSDescriptor

    source = Path(args.input)
    if not source.is_file():
        raise InputError(f"descriptors: input file not found: {str(source)!r}")
    target = check_output(args.output, inputs=[source], overwrite=args.overwrite)
    if getattr(args, "mace", None):
        return mace_descriptors(args, source, target)
    descriptor = QUESTSDescriptor(cutoff=args.cutoff, k=args.k, key=args.descriptors_key)  # checks before reading
    configs = read_configs(source, "descriptors: input")
    progress = False if args.no_progress else None
    new = descriptor.attach(configs, progress=progress)
    write_data(target, new)
    n_atoms = sum(len(a) for a in new)
    print(f"atomscore: wrote {len(new)} configurations ({n_atoms} environments, "
          f"arrays[{args.descriptors_key!r}] with {descriptor.n_features} columns) to {target}")
    return 0


def mace_descriptors(args, source, target):
    """``atomscore descriptors --mace MODEL``: the model's invariant per-atom features instead of QUESTS'."""
    from atomscore.io import read_configs, write_data
    from atomscore.ltau import mace

    model = input_file(args.mace, "--mace")
    new = mace.attach(model, read_configs(source, "descriptors: input"), key=args.descriptors_key)
    write_data(target, new)
    print(f"atomscore: wrote {len(new)} configurations ({sum(len(a) for a in new)} environments, "
          f"arrays[{args.descriptors_key!r}] with {new[0].arrays[args.descriptors_key].shape[1]} MACE invariant "
          f"features) to {target}")
    return 0


def add_descriptors_command(subparsers):
    """Register ``atomscore descriptors`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "descriptors", help="attach QUESTS descriptors to configurations",
        description="Compute the QUESTS descriptor of every atom (the quests package; species are not "
                    "distinguished) and write the configurations with arrays[KEY], in the format of the "
                    "output's suffix.",
        epilog="examples:\n"
               "  atomscore descriptors train.xyz -o train_descriptors.xyz\n"
               "  atomscore descriptors md.traj --cutoff 4.5 -k 24 -o md_descriptors.db\n")
    p.add_argument("input", help="configurations (any format ASE reads; all frames)")
    flags.add_output(p, "train_descriptors.xyz")
    flags.add_descriptor_settings(p, always_computed=True)
    flags.add_no_progress(p)
    flags.add_mace_model(p, "use this MACE model's invariant node features instead of QUESTS descriptors")
    p.set_defaults(func=cmd_descriptors)


# --------------------------------------------------------------------------- entropy

def dataset_information(args) -> dict:
    """Entropy, diversity and efficiency of ``args.dataset`` with the settings that define them."""
    from atomscore.quests.kernels.gaussian import dataset_information as information

    check_positive(args.bandwidth, "-b/--bandwidth", allow_array=False)
    configs = read_input_configs(args.dataset, "DATASET")
    settings = descriptor_settings(args, configs)
    configs = attach(configs, settings, args.descriptors_key)
    x = stacked(configs, args.descriptors_key, "DATASET")
    if len(x) < 2:
        raise InputError(f"DATASET: {str(args.dataset)!r} has {len(x)} atomic environment(s); the efficiency "
                         "H / log N needs at least 2")
    result = {"units": {"entropy": "nats", "diversity": "nats", "efficiency": "dimensionless (entropy / log N)"},
              "n_environments": int(len(x)), "n_configurations": len(configs), "bandwidth": args.bandwidth,
              "descriptors": provenance(settings, args.descriptors_key), "dataset": str(args.dataset)}
    if args.sample is None:
        info = information(x, args.bandwidth)
        values = {"entropy": float(info.entropy), "diversity": float(info.diversity),
                  "efficiency": float(info.efficiency)}
    else:
        from atomscore.quests.kernels.gaussian import estimate_information

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
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    p.add_argument("--sample", type=flags.int_at_least(2), default=None, metavar="N",
                   help="estimate from N sampled environments' kernel sums against all (cost N x all), "
                        "printed with its standard error (default: exact)")
    p.add_argument("--seed", type=flags.int_at_least(0), default=0, help="random seed of --sample (default 0)")
    p.add_argument("--json", action="store_true", help="print the values and settings as JSON")
    p.set_defaults(func=cmd_entropy)


# --------------------------------------------------------------------------- dh

def cmd_dh(args):
    from atomscore.quests import QUESTSDeltaEntropyScore

    test_path = input_file(args.test, "TEST")
    ref_path = input_file(args.reference, "--reference")
    check_command_output(args, [test_path, ref_path])
    check_positive(args.bandwidth, "-b/--bandwidth", allow_array=False)
    configs = read_input_configs(test_path, "TEST")
    reference, settings = reference_descriptors(ref_path, configs, args, "--reference")
    configs = attach(configs, settings, args.descriptors_key)
    score = QUESTSDeltaEntropyScore()
    compute_args = {"reference_set": reference, "descriptors_key": args.descriptors_key,
                    "bandwidth": args.bandwidth}
    values = score.compute_batch(configs, "DELTA_ENTROPY", **compute_args)
    metadata = score.get_metadata("DELTA_ENTROPY", **compute_args)
    metadata.update(descriptors=provenance(settings, args.descriptors_key), reference=str(ref_path),
                    n_reference=int(len(reference)))
    path = write_scored(score, values, configs, metadata, args)
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
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    flags.add_output(p, "dh.xyz")
    p.set_defaults(func=cmd_dh)
