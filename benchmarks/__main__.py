"""`make bench`: run every benchmarks/bench_*.py module's `main(quick=...)` in turn.

python -m benchmarks [--quick] [NAME ...]   (NAME: labeling, export, training, app, ...)
Each benchmark prints its figures as ratios against a baseline measured in the same process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    available = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(available)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(available)
    if unknown:
        parser.error(f"unknown benchmark {sorted(unknown)}; have {available}")
    failed = []
    for name in args.names or available:
        print(f"\n=== bench {name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        try:
            module.main(quick=args.quick)
        except Exception as exc:  # report and go on with the others
            print(f"bench {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.1f}s ===", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
