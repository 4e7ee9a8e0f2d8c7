"""LoRA fine-tuning and evaluation of Wan2.2-TI2V-5B on visual puzzles, built on DiffSynth-Studio.

Importing the package makes every entry point offline and lets DIFFSYNTH_PATH (a DiffSynth checkout) take
precedence over the installed `diffsynth`, before anything imports it. This is the one place: every process that
loads a model imports the package first (the root scripts, `python -m wan_sft.*`: the launchers, accelerate's ranks
`-m wan_sft.train`, the Slurm tasks; evaluation workers), and the processes they start inherit the variables.
"""
import os
import sys

for _name, _value in (("DIFFSYNTH_SKIP_DOWNLOAD", "True"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)
if os.environ.get("DIFFSYNTH_PATH") and os.environ["DIFFSYNTH_PATH"] not in sys.path:
    sys.path.insert(0, os.environ["DIFFSYNTH_PATH"])
