"""The verifiable alignment benchmark's harness: the gold evaluation and the report `benchmarks/alignment.py`
prints. The task and its start model live in `selfsteer.toy` (actors import them at run time).

    evaluation   gold reward, win rate and steerability of a model on held-out prompts
    report       tables, plots and the gold pair signal of a run's triples
    realbench/   the real-model benchmark (IFEval/IFBench checkers, SmolLM2)
"""
