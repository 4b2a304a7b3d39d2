"""Built-in tools that capability workers run."""
