"""Generate a video from a puzzle image with Wan2.2-TI2V-5B (+ LoRA): see `python inference.py --help`."""
import sys

from wan_sft.inference import main

if __name__ == "__main__":
    sys.exit(main())
