"""Performance benchmarks of the NeuroStack inference path (see README.md)."""
