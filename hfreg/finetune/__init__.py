"""The harness: fine-tune under each regularization preset and measure overfitting.

    arguments  the command line: the flags as dataclasses `HfArgumentParser` reads, args files
    data       loading, column detection, tokenizing once, subsets and loaders
    training   one run (`Settings`, `train`), run-parallel or data-parallel
    records    what defines an experiment; runs.jsonl; the work queue several processes share (no torch)
    sweep      the grid, the launch, progress (`accelerate launch -q -m hfreg.finetune`)
    tracking   live tracking through Accelerate's trackers, one tracker run per training run
    report     summaries, tables and plots rebuilt from runs.jsonl (no torch)
    presets    the regularization presets (configs/presets/*.toml)
    synthetic  the built-in data set
"""
