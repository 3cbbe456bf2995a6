"""Loopback stand-ins for the services the project talks to, for tests."""
