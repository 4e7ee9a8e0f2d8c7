"""Evaluate a LoRA on VLMPuzzle tasks with one worker per GPU: see `python parallel_eval.py --help`."""
import sys

from wan_sft.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
