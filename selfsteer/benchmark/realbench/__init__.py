"""The real-model benchmark: IFEval-style verifiable constraints on real questions, SmolLM2-135M.

    ifeval_task  prompts (train / held-out, disjoint questions) as IFEval JSONL records
    checkers     strict constraint accuracy with IFEval's checkers, offline, failing loudly
    evaluate     greedy held-out accuracy of a model directory
    ifbench      IFBench's own test prompts and verifiers, imported and scored offline (the public anchor)
    constraints  a user's own IFEval/IFBench rows scored strict and loose by the above (`selfsteer eval`)
"""
