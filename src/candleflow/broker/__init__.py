"""Kafka plumbing: the local development broker and topic administration."""
