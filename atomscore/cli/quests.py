"""QUESTS commands: ``atomscore descriptors``, ``atomscore entropy`` and ``atomscore dh``.

Each reads configurations in any format ASE reads, computes QUESTS descriptors where the
file holds none (``--cutoff``, ``-k``), computes in this process and writes or prints the
result with the settings that define it; outputs are checked before anything is computed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from atomscore.cli import flags
from atomscore.cli.common import (attach, check_command_output, descriptor_settings, input_file, naming,
                                  output_configs, provenance, read_input_configs, recorded_settings,
                                  reference_descriptors, stacked, stage, write_scored)
from atomscore.errors import InputError
from atomscore.quests.defaults import DEFAULT_BANDWIDTH
from atomscore.validation import check_finite_output, check_positive

log = logging.getLogger(__name__)


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
    with stage(f"QUESTS descriptors of {len(configs)} configuration(s), {sum(len(a) for a in configs)} atoms",
               bar=not args.no_progress, cutoff=f"{args.cutoff} Å", k=args.k, key=repr(args.descriptors_key)):
        new = descriptor.attach(configs, progress=progress)
    write_data(target, new, overwrite=args.overwrite)
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
    """Entropy, diversity and efficiency of ``args.dataset``, computed by the dataset scores
    (:meth:`~atomscore.quests.QUESTSEfficiencyScore.information`), with the settings of the call."""
    from atomscore.quests.score import QUESTSEfficiencyScore, check_bandwidth

    check_bandwidth(args.bandwidth, "-b/--bandwidth")  # the scores' own check, before any work
    flags.check_prune(args, "sample_size" if args.sample is not None else None)
    configs = read_input_configs(args.dataset, "DATASET")
    settings = descriptor_settings(args, configs)
    if settings is None:
        recorded_settings(args, (configs, f"DATASET {str(args.dataset)!r}"))
    configs = attach(configs, settings, args.descriptors_key)
    n = sum(len(a) for a in configs)
    if n < 2:
        raise InputError(f"DATASET: {str(args.dataset)!r} has {n} atomic environment(s); the efficiency "
                         "H / log N needs at least 2")
    score = QUESTSEfficiencyScore()
    given = {"seed": args.seed} if args.seed is not None else {}  # else the score's default
    given.update(prune=args.prune, prune_tolerance=args.prune_tolerance)
    sampled = min(args.sample, n) if args.sample is not None else None
    what = f"{sampled} sampled x {n}" if sampled is not None else f"{n} x {n}"
    seed = {**score.compute_defaults(), **given}["seed"]
    with stage(f"kernel sums of {what} environments", bandwidth=args.bandwidth,
               **({"seed": seed} if sampled is not None else {})), naming(f"DATASET {str(args.dataset)!r}"):
        measures = score.information(configs, descriptors_key=args.descriptors_key, bandwidth=args.bandwidth,
                                     sample_size=args.sample, **given)
    meta = score.metadata_of(measures)
    result = {"units": {"entropy": "nats", "diversity": "nats", "efficiency": "dimensionless (entropy / log N)"},
              "n_environments": n, "n_configurations": len(configs), "bandwidth": meta["bandwidth"],
              "descriptors": provenance(settings, args.descriptors_key), "dataset": str(args.dataset),
              **flags.prune_settings(meta)}
    with naming(f"DATASET {str(args.dataset)!r}"):
        check_finite_output(measures, "entropy, diversity, efficiency")
    if "sample_size" not in meta:
        values = {name: float(v) for name, v in measures.items()}
    else:
        values = {name: float(e.value) for name, e in measures.items()}
        values["standard_error"] = {name: float(e.standard_error) for name, e in measures.items()}
        result.update(sample_size=min(meta["sample_size"], n), seed=meta["seed"])
    # what the numbers mean: effective numbers of distinct environments (see docs/quests.md)
    values["effective_environments"] = {"exp_entropy": math.exp(values["entropy"]),
                                        "exp_diversity": math.exp(values["diversity"])}
    suggested = volume_bandwidths(configs)
    if suggested["dataset"] is not None:
        result["volume_rule_bandwidth"] = suggested["dataset"]
    return {**values, **result}


def cmd_entropy(args):
    result = dataset_information(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    se = result.get("standard_error")
    pm = {name: f" ± {se[name]:.2g}" if se else "" for name in ("entropy", "diversity", "efficiency")}
    n = result["n_environments"]
    eff = result["effective_environments"]
    print(f"entropy     {result['entropy']:.6g} nats{pm['entropy']}   exp(H) = {eff['exp_entropy']:.4g} of N = {n}")
    print(f"diversity   {result['diversity']:.6g} nats{pm['diversity']}   exp(D) = {eff['exp_diversity']:.4g}: "
          f"the effective number of distinct environments (1 to N = {n})")
    print(f"efficiency  {result['efficiency']:.6g}{pm['efficiency']}   H / log N: 1 = every environment "
          "distinct from the others, 0 = all alike")
    if se:
        print(f"            (± one standard error, from {result['sample_size']} sampled environments, "
              f"seed {result['seed']})")
    desc = result["descriptors"]
    where = f"cutoff {desc['cutoff']} Å, k {desc['k']}" if "cutoff" in desc else desc["source"]
    print(f"settings    N = {n} environments in {result['n_configurations']} configuration(s), bandwidth "
          f"{result['bandwidth']}, descriptors: {where}")
    if line := flags.prune_line(result):
        print(line)
    rule = result.get("volume_rule_bandwidth")
    hint = (f"; the QUESTS authors' volume rule gives {rule:.4g} for this dataset (atomscore bandwidth)"
            if rule is not None else "")
    print(f"bandwidth   environments closer than about h = {result['bandwidth']} in descriptor space count as "
          f"the same: a larger h gives fewer distinct environments (smaller H, D); values compare only at one "
          f"h{hint}")
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
               "  atomscore entropy big.xyz --sample 2000 --seed 1   # estimate with its standard error\n"
               "  atomscore entropy big.xyz --prune   # exact to 1e-10 of each kernel sum, faster on large sets\n")
    p.add_argument("dataset", help="configurations (any format ASE reads)")
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    flags.add_prune(p)
    p.add_argument("--sample", type=flags.int_at_least(2), default=None, metavar="N",
                   help="estimate from N sampled environments' kernel sums against all (cost N x all), "
                        "printed with its standard error (default: exact)")
    p.add_argument("--seed", type=flags.int_at_least(0), default=None,
                   help="random seed of --sample (default: that of QUESTSEfficiencyScore.compute)")
    p.add_argument("--json", action="store_true", help="print the values and settings as JSON")
    p.set_defaults(func=cmd_entropy, flag_names=_QUESTS_FLAGS)


#: library argument names -> flags of the QUESTS commands (their error lines name the flags)
_QUESTS_FLAGS = {"bandwidth": "-b/--bandwidth", "sample_size": "--sample", "seed": "--seed", "cutoff": "--cutoff",
                 "k": "-k", "key": "--descriptors-key", "descriptors_key": "--descriptors-key", **flags.PRUNE_FLAGS}


# --------------------------------------------------------------------------- dh

#: what ``atomscore dh`` ranks by (``--sort``): the column and its heading
DH_SORT = {"max": "max dH", "mean": "mean dH", "count": "dH > 0"}


def dh_rows(values, configs, label_key=None) -> list[dict]:
    """One row per configuration: index, label, atoms, mean and max dH (nats), atoms with dH > 0."""
    rows = []
    for i, (dh, atoms) in enumerate(zip(values, configs)):
        label = atoms.info.get(label_key) if label_key else None
        rows.append({"index": i, "label": "-" if label is None else str(label), "atoms": len(dh),
                     "mean": float(np.mean(dh)) if len(dh) else None, "max": float(np.max(dh)) if len(dh) else None,
                     "count": int(np.sum(np.asarray(dh) > 0))})
    return rows


def ranked(rows, sort, top=None) -> list[dict]:
    """``rows`` by ``sort`` (largest first; empty configurations last; ties by index), the first ``top``."""
    key = {"max": "max", "mean": "mean", "count": "count"}[sort]
    order = sorted(rows, key=lambda r: (r[key] is None, -(r[key] or 0), r["index"]))
    return order if top is None else order[:top]


def print_dh_table(rows, sort, top, label_key, n_total):
    label = [f"{label_key[:14]:<14}"] if label_key else []
    print(" ".join([f"{'config':>6}", *label, f"{'atoms':>6}", f"{'mean dH':>10}", f"{'max dH':>10}",
                    f"{'dH > 0':>7}"]))
    for r in ranked(rows, sort, top):
        cells = [f"{r['index']:>6}", *([f"{r['label'][:14]:<14}"] if label_key else []), f"{r['atoms']:>6}"]
        cells += [f"{'-':>10}" if r[k] is None else f"{r[k]:>10.4g}" for k in ("mean", "max")]
        print(" ".join(cells + [f"{r['count']:>7}"]))
    shown = f"the {min(top, n_total)} of {n_total}" if top is not None and top < n_total else f"all {n_total}"
    new = sum(r["count"] for r in rows)
    total = sum(r["atoms"] for r in rows)
    print(f"({shown} configurations, ranked by {DH_SORT[sort]} (--sort), largest first. dH in nats: dH > 0 "
          f"marks an environment the reference lacks ({new} of {total} here). A frame can add new environments "
          "while its mean dH is negative: its well-covered atoms (many close reference neighbours, dH < 0) "
          "outweigh its few new ones in the mean; max dH and the dH > 0 count show them.)")


def cmd_dh(args):
    from atomscore.quests.score import QUESTSDeltaEntropyScore, check_bandwidth

    test_path = input_file(args.test, "TEST")
    ref_path = input_file(args.reference, "--reference")
    check_command_output(args, [test_path, ref_path])
    check_bandwidth(args.bandwidth, "-b/--bandwidth")  # the score's own check, before any work
    flags.check_prune(args)
    configs = read_input_configs(test_path, "TEST")
    if args.label and not any(args.label in atoms.info for atoms in configs):
        keys = sorted({k for atoms in configs for k in atoms.info})
        raise InputError(f"--label: no configuration of TEST has info[{args.label!r}]; its info keys: "
                         f"{', '.join(keys) or 'none'}")
    reference, settings = reference_descriptors(ref_path, configs, args, "--reference", f"TEST {str(test_path)!r}")
    scored = attach(configs, settings, args.descriptors_key)
    score = QUESTSDeltaEntropyScore()
    compute_args = {"reference_set": reference, "descriptors_key": args.descriptors_key,
                    "bandwidth": args.bandwidth, "prune": args.prune, "prune_tolerance": args.prune_tolerance}
    n_atoms = sum(len(a) for a in configs)
    with stage(f"dH of {n_atoms} environments against {len(reference)}", bandwidth=args.bandwidth), \
            naming(f"TEST {str(test_path)!r} against --reference {str(ref_path)!r}"):
        values = check_finite_output(score.compute_batch(scored, "DELTA_ENTROPY", **compute_args), "dH")
    metadata = score.metadata_of(values)
    metadata.update(descriptors=provenance(settings, args.descriptors_key), reference=str(ref_path),
                    n_reference=int(len(reference)))
    path = write_scored(score, values, output_configs(configs, scored, args), metadata, args)
    print_dh_table(dh_rows(values, configs, args.label), args.sort, args.top, args.label, len(values))
    if line := flags.prune_line(metadata):
        print(line)
    print(f"atomscore: wrote per-atom dH (arrays['{score.result_key}']) of {len(values)} configuration(s) "
          f"to {path}")
    return 0


def add_dh_command(subparsers):
    """Register ``atomscore dh``."""
    p = subparsers.add_parser(
        "dh", help="QUESTS delta entropy of each atom against a reference set",
        description="Write TEST with the QUESTS delta entropy dH (nats) of every atom against the environments "
                    "of --reference (dH > 0: an environment the reference lacks) and print a table of the "
                    "configurations ranked by their largest dH (--sort). Descriptors are read from the files, "
                    "or computed with --cutoff and -k.",
        epilog="examples:\n"
               "  atomscore dh candidates.xyz --reference train.xyz -o dh.xyz\n"
               "  atomscore dh md.xyz --reference train.xyz -o dh.xyz --label config_type --top 10\n"
               "  atomscore dh md.traj --reference train.db -b 0.02 -o dh.db\n"
               "  atomscore dh candidates.xyz --reference train_descriptors.npy -o dh.xyz --overwrite\n")
    p.add_argument("test", help="configurations to score (any format ASE reads)")
    p.add_argument("--reference", required=True,
                   help="reference configurations (any format ASE reads) or their (n, dim) descriptors (.npy)")
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    flags.add_prune(p)
    flags.add_keep_descriptors(p)
    flags.add_output(p, "dh.xyz")
    p.add_argument("--sort", choices=tuple(DH_SORT), default="max",
                   help="rank the table by max dH (default: the most novel environment of each frame), mean dH, "
                        "or count (its atoms with dH > 0); largest first")
    p.add_argument("--top", type=flags.int_at_least(1), metavar="N", help="print only the first N rows")
    flags.add_label(p)
    p.set_defaults(func=cmd_dh, flag_names=_QUESTS_FLAGS)


# --------------------------------------------------------------------------- overlap

def cmd_overlap(args):
    from atomscore.quests.kernels.gaussian import delta_entropy
    from atomscore.quests.selection import OVERLAP_EPSILON

    eps = OVERLAP_EPSILON if args.eps is None else args.eps
    if not (math.isfinite(eps) and eps > 0):
        raise InputError(f"--eps: expected a finite number of nats > 0, got {args.eps}")
    check_positive(args.bandwidth, "-b/--bandwidth", allow_array=False)
    a_path, b_path = input_file(args.a, "A"), input_file(args.b, "B")
    if a_path.suffix.lower() in (".npy", ".txt"):
        from atomscore.cli.common import descriptor_array

        x = descriptor_array(a_path, "A")
        y, settings = reference_descriptors(b_path, [], args, "B", "A")
    else:
        configs = read_input_configs(a_path, "A")
        y, settings = reference_descriptors(b_path, configs, args, "B", f"A {str(a_path)!r}")
        x = stacked(attach(configs, settings, args.descriptors_key), args.descriptors_key, "A")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"A and B: descriptors of dimension {x.shape[1]} and {y.shape[1]}; compute both with the "
                         "same --cutoff and -k")
    with stage(f"dH of {len(x)} environments of A against {len(y)} of B", bandwidth=args.bandwidth):
        dh = delta_entropy(x, y, args.bandwidth)
    covered = int(np.sum(dh < eps))
    result = {"overlap": covered / len(x), "covered": covered, "n_a": int(len(x)), "n_b": int(len(y)),
              "eps": eps, "bandwidth": args.bandwidth, "a": str(a_path), "b": str(b_path),
              "descriptors": provenance(settings, args.descriptors_key),
              "units": {"overlap": "fraction of A's environments", "eps": "nats"}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"overlap  {result['overlap']:.4f}   {covered} of {len(x)} environments of A have a close environment "
          f"in B (dH against B < {eps:g} nats)")
    print(f"         1 = B covers everything A holds; 0 = A is all new to B. Not symmetric: atomscore overlap B A "
          f"asks the other way. bandwidth {args.bandwidth}")
    return 0


def add_overlap_command(subparsers):
    """Register ``atomscore overlap``."""
    p = subparsers.add_parser(
        "overlap", help="fraction of A's environments that B covers (as quests overlap)",
        description="Print the fraction of the atomic environments of A whose QUESTS delta entropy against B is "
                    "below --eps (as the quests overlap command): 1 when B already holds everything A holds.",
        epilog="examples:\n"
               "  atomscore overlap md.xyz train.xyz\n"
               "  atomscore overlap new.xyz train_descriptors.npy -b 0.03 --json\n")
    p.add_argument("a", metavar="A", help="configurations (any format ASE reads) or their (n, dim) descriptors (.npy)")
    p.add_argument("b", metavar="B", help="the reference: configurations or their descriptors (.npy)")
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    p.add_argument("--eps", type=float, default=None,
                   help="an environment is covered when its dH against B is below this (nats; default 1e-05, "
                        "as quests)")
    p.add_argument("--json", action="store_true", help="print the value and settings as JSON")
    p.set_defaults(func=cmd_overlap, flag_names=_QUESTS_FLAGS)


# --------------------------------------------------------------------------- bandwidth

BANDWIDTH_METHODS = ("gaussian", "cutoff")


def volume_bandwidths(configs, method="gaussian") -> dict:
    """The QUESTS authors' volume rule (``quests.entropy.get_bandwidth``) per structure and for a dataset.

    Returns ``{"per_config": [(volume per atom in Å³ or None, h or None), ...], "dataset": h or None,
    "volume_per_atom": Å³ or None}``; the dataset's volume per atom is its total cell volume over
    its total atoms (periodic structures only; those without a 3D cell get None).
    """
    from quests.entropy import get_bandwidth  # the rule itself: quests', not a copy

    per, volume, atoms_total = [], 0.0, 0
    for atoms in configs:
        if len(atoms) and atoms.pbc.all() and atoms.cell.rank == 3:
            v = float(atoms.get_volume()) / len(atoms)
            per.append((v, float(get_bandwidth(v, method))))
            volume += float(atoms.get_volume())
            atoms_total += len(atoms)
        else:
            per.append((None, None))
    v_all = volume / atoms_total if atoms_total else None
    return {"per_config": per, "volume_per_atom": v_all,
            "dataset": None if v_all is None else float(get_bandwidth(v_all, method))}


def cmd_bandwidth(args):
    if args.volume is not None:
        from quests.entropy import get_bandwidth

        if not (math.isfinite(args.volume) and args.volume > 0):
            raise InputError(f"--volume: expected a volume per atom in Å³ > 0, got {args.volume}")
        h = float(get_bandwidth(args.volume, args.method))
        print(f"V = {args.volume:.4g} Å³/atom -> h = {h:.5f} (QUESTS volume rule, {args.method}; "
              f"the default -b is {DEFAULT_BANDWIDTH})")
        return 0
    if not args.files:
        raise InputError("bandwidth: give configuration files, or --volume Å³ per atom")
    rows, configs_all = [], []
    for name in args.files:
        configs = read_input_configs(input_file(name, "FILE"), "FILE")
        configs_all += configs
        rule = volume_bandwidths(configs, args.method)
        rows += [(name, i, v, h) for i, (v, h) in enumerate(rule["per_config"])]
    dataset = volume_bandwidths(configs_all, args.method)
    log.debug("bandwidth: quests.entropy.get_bandwidth(volume per atom, %r) over %d structure(s) of %s",
              args.method, len(rows), ", ".join(args.files))
    if dataset["dataset"] is None:
        raise InputError("bandwidth: no periodic structure with a 3D cell in the input; the volume rule needs a "
                         "volume per atom (give --volume)")
    if args.json:
        print(json.dumps({"bandwidth": dataset["dataset"], "volume_per_atom": dataset["volume_per_atom"],
                          "method": args.method, "units": {"bandwidth": "1/Å (descriptor units)",
                                                           "volume_per_atom": "Å³"},
                          "per_config": [{"file": f, "index": i, "volume_per_atom": v, "bandwidth": h}
                                         for f, i, v, h in rows]}, indent=2))
        return 0
    if args.per_structure:
        print(f"{'file':<24} {'config':>6} {'Å³/atom':>9} {'h':>8}")
        for f, i, v, h in rows:
            print(f"{f[-24:]:<24} {i:>6} " + (f"{v:>9.4g} {h:>8.5f}" if v is not None else f"{'-':>9} {'-':>8}"
                                                  + "  (no periodic cell)"))
    skipped = sum(v is None for _, _, v, _ in rows)
    print(f"bandwidth  h = {dataset['dataset']:.5f} for the dataset (V = {dataset['volume_per_atom']:.4g} Å³/atom: "
          f"total cell volume / total atoms of {len(rows) - skipped} structure(s)"
          + (f"; {skipped} without a periodic cell skipped" if skipped else "") + ")")
    print(f"           the QUESTS authors' rule (quests bandwidth, {args.method}); atomscore's default -b "
          f"{DEFAULT_BANDWIDTH} is quests' default. Pass -b {dataset['dataset']:.5f} to entropy, dh, overlap, "
          "select and curve to use it; compare values only at one h.")
    return 0


def add_bandwidth_command(subparsers):
    """Register ``atomscore bandwidth``."""
    p = subparsers.add_parser(
        "bandwidth", help="the kernel bandwidth from the volume per atom (the QUESTS authors' rule)",
        description="Print the QUESTS kernel bandwidth that the volume rule of the QUESTS authors gives (as the "
                    "quests bandwidth command: quests.entropy.get_bandwidth of the volume per atom), for the "
                    "whole dataset and, with --per-structure, for each structure.",
        epilog="examples:\n"
               "  atomscore bandwidth train.xyz\n"
               "  atomscore bandwidth train.xyz md.traj --per-structure\n"
               "  atomscore bandwidth --volume 20.0\n")
    p.add_argument("files", nargs="*", metavar="FILE", help="configurations (any format ASE reads); periodic cells")
    p.add_argument("--volume", type=float, help="a volume per atom in Å³ instead of files")
    p.add_argument("--method", choices=BANDWIDTH_METHODS, default="gaussian",
                   help="the rule's form: gaussian (default, as quests) or cutoff (quests bandwidth -c)")
    p.add_argument("--per-structure", action="store_true", help="also one line per structure")
    p.add_argument("--json", action="store_true", help="print the values as JSON")
    p.set_defaults(func=cmd_bandwidth)
