"""The command-line interface: thin click wrappers over the library (no algorithm lives here)."""
