"""selfsteer.run: the online run."""
