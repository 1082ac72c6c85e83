"""The harness: fine-tune under each regularization preset and measure overfitting.

    data       loading, column detection, tokenizing once, subsets and loaders
    training   one run (`Settings`, `train`), run-parallel or data-parallel
    records    what defines an experiment; runs.jsonl; the work queue several processes share (no torch)
    sweep      the command line: the grid, the launch, progress (`accelerate launch -m hfreg.finetune`)
    report     summaries, tables and plots rebuilt from runs.jsonl (no torch)
    presets    the regularization presets (configs/presets/*.toml)
    synthetic  the built-in data set
"""
