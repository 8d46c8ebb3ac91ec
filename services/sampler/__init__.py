"""sampler: decides which live outputs become ranking tasks.

Human ranking time is the scarcest resource of the loop, so this service is a policy,
not a filter: ordered rules (filter + strategy + rate/budget/quota), near-duplicate
suppression, candidate completion up to N answers, and PII redaction before any text
reaches an annotator.
"""
