"""The harness: fine-tune under each regularization preset and measure overfitting.

    arguments  the command line: the flags as dataclasses `HfArgumentParser` reads, args files
    tasks      what each problem type measures and judges (a table: classification, regression, causal LM, tagging)
    kinds      what each `--task` loads, processes and collates (a table), one data module per kind:
    data         text: loading, column detection, tokenizing once, subsets and loaders
    causal_lm    instruction pairs, conversations and plain text, loss on completions
    images       imagefolder directories or an image column, through the model's image processor
    tokens       word-level tags on first sub-tokens
    settings   a run's training hyperparameters and what they make of its steps (no torch)
    training   one run (`Job`, `train`: a small class of phases), run-parallel or data-parallel
    prepare    what a run does to its model copy first: head, re-initialised layers, LoRA, the patch, weight decay,
               LLRD
    scores     the per-point metrics and per-example terms each task stores
    records    what defines an experiment; runs.jsonl; the work queue several processes share (no torch)
    sweep      the launch (`accelerate launch -q -m hfreg.finetune`): the command line, then the grid
    experiment what a launch runs on, built and checked before anything is written
    grid       the grid's phases: the directory, the stages, training here or on Ray, the report
    cluster    the same grid on a Ray cluster
    keep       the model a run chose, kept with its card (`--save_strategy`, `--push_to_hub`)
    export     a recorded run trained again and kept (`hfreg export`)
    tracking   live tracking through Accelerate's trackers, one tracker run per training run
    stats      the verdicts' statistics: tests, staged looks, pooling (no torch)
    report     summaries, tables and plots rebuilt from runs.jsonl (no torch)
    presets    the regularization presets (configs/presets/*.toml)
    synthetic  the built-in data set
"""
