"""Configuration and database plumbing of the registry."""
