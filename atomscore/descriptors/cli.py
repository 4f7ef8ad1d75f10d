"""``atomscore descriptors IN.xyz -o OUT.xyz``: attach QUESTS descriptors to configurations."""

from __future__ import annotations


def cmd_descriptors(args):
    from atomscore.descriptors.quests import QUESTSDescriptor
    from atomscore.io import read_extxyz, write_extxyz

    configs = read_extxyz(args.input)
    descriptor = QUESTSDescriptor(cutoff=args.cutoff, k=args.k, key=args.key)
    out = descriptor.attach(configs)
    write_extxyz(args.output, out)
    n_atoms = sum(len(a) for a in out)
    print(f"atomscore: wrote {len(out)} configurations ({n_atoms} environments, "
          f"{2 * args.k - 1} features each) to {args.output}")
    return 0


def add_descriptors_command(subparsers):
    p = subparsers.add_parser("descriptors", help="attach QUESTS descriptors to configurations",
                              description="Compute the QUESTS descriptor of every atom (through the quests "
                              "package) and write the configurations with arrays[KEY] set.")
    p.add_argument("input", help="extxyz file of configurations")
    p.add_argument("-o", "--output", required=True, help="extxyz file to write")
    p.add_argument("--cutoff", type=float, default=5.0, help="neighbour cutoff in Å (default 5.0)")
    p.add_argument("-k", type=int, default=32, help="neighbours per environment (default 32)")
    p.add_argument("--key", default="descriptors", help="atoms.arrays key to write (default 'descriptors')")
    p.set_defaults(func=cmd_descriptors)
