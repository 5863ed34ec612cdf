"""The COSMOS 1050K evaluation: prompts from ground truth, Dice / NSD, oracle and deployable selection,
efficiency, reports. ``minisam_train.tasks.evaluate.run(cfg)`` wires it to the ``eval`` config.

Modules:
    metrics: ``dice_score``, ``normalized_surface_dice``.
    point_sampling: ``make_prompt`` (official and seeded random prompts), ``PROMPT_MODES``.
    model_entries: the ``models`` list (sources, adapters on/off, quantization, display names).
    evaluator: ``Evaluator`` (the loop, resume, failures), ``EvalSettings``.
    efficiency: ``ModelTimer`` (encoder / decoder times, peak RSS / VRAM).
    results: ``per_object.csv`` (append, resume).
    shards, distributed: one evaluation over several processes (``accelerate launch``): who does which
        slice, the per-process files and their merge.
    report: ``summary.md``, ``summary.csv``, plots.
"""
