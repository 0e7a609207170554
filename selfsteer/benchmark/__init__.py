"""The verifiable alignment benchmark: a task a program can grade, its start model, the gold
evaluation and the report `benchmarks/alignment.py` prints.

    task         prompts, five gold-scored dimensions and their principles (`model.policy: task`)
    start_model  the toy Llama SFT'd to be steerable but not aligned
    evaluation   gold reward, win rate and steerability of a model on held-out prompts
    report       tables, plots and the gold pair signal of a run's triples
"""
