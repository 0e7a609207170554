"""Principle pairs for SSO (spec §7): the v1 dimension library and the v2 LLM principle prompt."""
