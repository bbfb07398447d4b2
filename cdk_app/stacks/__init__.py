"""Wiring stacks: each creates constructs, passes attributes between them and grants access."""
