"""One module per Ray role: rollout engines, principle generator, reference model, trainer group, weight syncer."""
