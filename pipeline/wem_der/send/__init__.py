"""Sending: the quota, the token, one HTTP attempt, retries, and the per-record submitter."""
