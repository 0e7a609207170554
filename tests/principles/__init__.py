"""Tests for selfsteer.principles against docs/concepts/sso.md §7."""
