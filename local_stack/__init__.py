"""The Docker-free local stack: the services and the serverless parts of FraudSys on one machine."""

#: records the in-memory broker's log holds before the relay rolls it (``StackConfig``'s
#: ``broker_roll_records``; here so the CLI's defaults need not import the stack)
DEFAULT_BROKER_ROLL_RECORDS = 100_000
