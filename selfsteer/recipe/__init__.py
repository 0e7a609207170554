"""The published five-phase SSO recipe (docs/concepts/sso.md §4, §8) on selfsteer's actors.

    prompts.json --principles--> principles.json --sso-data--> sso_data.json --train sso--> generator/
    principles.json + generator --dpo-data--> dpo_data.json --train dpo (original policy)--> final/

Each phase reads and writes the recipe's JSON records byte for byte (`records`), resumes after an
interruption (`resume`), and runs on the same Ray roles as the online loop (`phases`, `training`, sharing `workbench`).
"""
