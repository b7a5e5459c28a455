"""The hub: a resident controller, and a local client's way through it (issue 20)."""
