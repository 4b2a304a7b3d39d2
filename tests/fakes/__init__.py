"""Test doubles that implement real interfaces: local HTTP servers speaking the LLM
providers' wire formats, and a manual clock."""
