"""event-logger: tails the loop's topics and logs one structured line per event.

An audit trail of the loop (what happened, with the ids that trace it), and the
smallest service built on the runner.
"""
