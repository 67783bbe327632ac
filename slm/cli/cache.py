"""slm cache [clean]: the profile cache's size, and pruning it."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("cache", help="the profile cache (quantized GGUFs per set of weights): size, clean")
    cs = p.add_subparsers(dest="cache_verb", metavar="ACTION")
    c = cs.add_parser("clean", help="remove cache entries (all, or those unused for --older-than days)")
    c.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                   help="only entries unused for more than this many days (default 0: every entry)")
    c.set_defaults(func=cmd_clean)
    p.set_defaults(func=cmd_cache)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def cmd_cache(args) -> int:
    from slm.profiling import cache, inputs  # deferred: the CLI starts without the profiling stack

    es = cache.entries()
    for e in es:
        print(f"{e.path.name}  {_mib(e.bytes):>12}  {e.files:>3} files  unused {e.age_days:6.1f} days"
              + ("  (in use)" if e.in_use else ""))
    print(f"{len(es)} entries, {_mib(sum(e.bytes for e in es))} in {inputs.CACHE}; `slm cache clean "
          "[--older-than DAYS]` removes them")
    return 0


def cmd_clean(args) -> int:
    from slm.profiling import cache  # deferred: the CLI starts without the profiling stack

    gone = cache.clean(args.older_than)
    print(f"removed {len(gone)} entries, {_mib(sum(e.bytes for e in gone))}"
          + (f" unused for more than {args.older_than:g} days" if args.older_than else ""))
    return 0
