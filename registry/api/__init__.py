"""The registry's HTTP API: routes, dependencies and the error mapping."""
