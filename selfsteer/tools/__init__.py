"""selfsteer.tools: model tools."""
