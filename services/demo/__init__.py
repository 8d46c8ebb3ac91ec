"""demo: the outside world of the embedded loop.

Replays prompts from the bundled HH-RLHF sample to the policy server (which captures
what it answers), and runs simulated annotators that rank in Argilla through the same
endpoints as the UI, following a hidden preference (the oracle). Switch the
annotators off and a person ranks in the UI instead.
"""
