"""``atomscore demo``: information-matching active learning on SW silicon, as an HTML report."""

from __future__ import annotations

from pathlib import Path


def cmd_demo(args):
    from atomscore.demo import run_demo

    from atomscore.cli.common import stage

    with stage("demo", output=args.output, quick=args.quick):
        summary = run_demo(args.output, quick=args.quick)
    print(summary["result"])
    print(f"atomscore: demo finished; report at {Path(args.output) / 'report.html'}")
    return 0


def add_demo_command(subparsers):
    """Register ``atomscore demo``."""
    p = subparsers.add_parser("demo", help="information-matching active learning on SW silicon, as a report",
                              description="Choose training configurations for Stillinger-Weber silicon (the "
                              "OpenKIM model) so that its elastic constants are predicted to a target precision: "
                              "candidate pool, QUESTS information, FIMs, information matching, LTAU, and an HTML "
                              "report.",
                              epilog="examples:\n  atomscore demo\n  atomscore demo --output my_demo --quick\n")
    p.add_argument("--output", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--quick", action="store_true", help="a smaller pool, for tests (under a minute)")
    p.set_defaults(func=cmd_demo)
