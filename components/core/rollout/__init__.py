"""Rollout: the InferenceService manifest, the canary's traffic, its judge and the policy,
the Lease that locks a rollout and the snapshot a rollback re-applies."""
