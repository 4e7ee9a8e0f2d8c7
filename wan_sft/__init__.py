"""LoRA fine-tuning and evaluation of Wan2.2-TI2V-5B on visual puzzles, built on DiffSynth-Studio."""
