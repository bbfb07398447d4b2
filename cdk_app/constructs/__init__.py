"""One construct per FraudSys component; each exposes typed attributes for the stacks to wire."""
