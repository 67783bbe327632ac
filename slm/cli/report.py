"""slm report compare A B ..., slm report index DIR."""

from __future__ import annotations

from pathlib import Path

from slm.report.compare import build_index, compare_runs


def register(sub) -> None:
    p = sub.add_parser("report", help="compare runs side by side, or rebuild the reports index")
    rs = p.add_subparsers(dest="report_verb", metavar="ACTION", required=True)
    c = rs.add_parser("compare", help="several runs (profile, export, train, expand, merge…) side by side")
    c.add_argument("runs", nargs="+", help="run folders holding slm.json")
    c.add_argument("-o", "--out", default=None, help="output folder for index.html + slm.json "
                                                     "(default: reports/compare-A-vs-B)")
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_compare)
    i = rs.add_parser("index", help="rebuild reports/index.html from the run folders under it")
    i.add_argument("dir", nargs="?", default="reports")
    i.set_defaults(func=cmd_index)


def cmd_compare(args) -> int:

    out = (Path(args.out) if args.out
           else Path("reports") / ("compare-" + "-vs-".join(Path(r).name for r in args.runs)))
    print(f"compare → {compare_runs(args.runs, out, args.force)}")
    return 0


def cmd_index(args) -> int:

    print(f"index → {build_index(args.dir)}")
    return 0
