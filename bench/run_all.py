"""`make bench`: run every benchmark in turn, then rewrite the README's performance table from the results."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.readme_table import REPO, update_readme

BENCHMARKS = ("prepare", "teacher", "packing", "label", "generate", "student", "predict")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"=== bench.{name}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO)
        print(f"=== bench.{name}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(name)
    update_readme(failed=failed)
    print("README performance table rewritten from bench/results/*.json")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
