"""The fault-injection suite: history recorder, checker, report and the hypothesis state machine
that runs real `protojobs run` workers against real brokers behind toxiproxy (see README.md)."""
