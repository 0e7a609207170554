"""selfsteer.config: typed run configuration (dataclasses from YAML with dotted overrides)."""
