"""Tests for selfsteer.principles against spec shared/spec/sso.md §7."""
