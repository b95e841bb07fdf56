"""Data: preparation (tokenize + pack shards), mixtures, the checkpointable loader, the demo corpus."""
