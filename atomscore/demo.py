"""The main job, ``atomscore demo``: information-matching active learning on SW silicon."""

from __future__ import annotations

from pathlib import Path


def run_demo(output="demo_output", quick=False):
    """Run the main job into ``output``; return the summary dict."""
    raise NotImplementedError("the main job is being built")


def cmd_demo(args):
    summary = run_demo(args.output, quick=args.quick)
    print(f"atomscore: demo finished; report at {Path(args.output) / 'report.html'}")
    return 0


def add_demo_command(subparsers):
    p = subparsers.add_parser("demo", help="the main job: information-matching active learning on SW silicon",
                              description="Run the main job on Debian's SW silicon model: candidate pool, QUESTS "
                              "information, FIMs, information matching, LTAU, and an HTML report.")
    p.add_argument("--output", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("--quick", action="store_true", help="a smaller pool, for tests (under a minute)")
    p.set_defaults(func=cmd_demo)
