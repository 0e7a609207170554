"""selfsteer.utils: small shared helpers."""
