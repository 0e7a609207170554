"""Principle pairs for SSO (docs/concepts/sso.md §7): the v1 dimension library and the v2 LLM principle prompt."""
