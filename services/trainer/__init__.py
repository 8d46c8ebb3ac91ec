"""trainer: stores preferences, retrains the reward model and the policy once enough
new ones arrived, gates the candidate and publishes versions (docs/trainer.md)."""
