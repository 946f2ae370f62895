"""Shared pytest configuration. Fixtures for the sandbox cluster live in tests/integration/conftest.py."""
