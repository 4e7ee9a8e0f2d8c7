"""Build a checked training CSV (or, with `generate`, synthetic puzzles): see `python prepare_csv.py --help`."""
import sys

from wan_sft.prepare import main

if __name__ == "__main__":
    sys.exit(main())
