"""Helpers shared by every package of the stack: shard IO, atomic writes, logging,
progress bars, user errors and config validation. One implementation of each."""
