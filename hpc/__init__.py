"""Cluster machinery (fan-out, distributed init, job submission, checkpoints); knows no physics."""
