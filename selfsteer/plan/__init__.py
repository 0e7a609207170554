"""selfsteer.plan: resource planning: memory, time and placement of a run before it starts."""
