"""Studies: Optuna tuning and ablation of the variants, on one runner and Optuna's public API.

Needs the ``studies`` extra (``pip install "sb3-ppo-variants[studies]"``); importing the algorithms never imports
this package. A newcomer's map, in the order a study uses the modules::

    cli/tune.py, cli/ablate.py   the commands (sb3pv-tune, sb3pv-ablate; tuning/*.py call them): parse, validate, run
    storage.py       where a study lives (journal file, SQLite, PostgreSQL); open_study refuses another protocol
    registry.py      name -> algorithm class: VARIANTS, variant_ppo, sb3_ppo, trpo, maskable_ppo, recurrent_ppo
    search_spaces.py what a tuning trial samples            arms.py   what an ablation compares (--variants)
    tuning.py        a tuning trial's work: sample, train the K seeds as one batch, report to the pruner; its outputs
    ablation.py      the grid: cells enqueued in batches, each cell recorded complete at most once; its results
    runner.py        the one worker loop (study.optimize, cap, retries, catch), train_batch(cells, protocol), SeededRun
    liveness.py      dead workers (heartbeats, locks)
    report.py        what an ablation leaves behind (CSVs, report); statistics.py (rliable), plots.py, reference.py

The evaluation protocol (``EVAL_SEED_OFFSET``, ``evaluation_points``) is the algorithms' own:
:mod:`sb3_ppo_variants.evaluation`.
"""
