"""Entry point for `ray job submit --working-dir . -- python launch/generate.py --config X.yaml [--set k=v ...]`."""

import os
import sys

# The job's working dir is the uploaded repo: make the package importable without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from arena_dist.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
