"""QuorumBuffer mode: the contract between a writer and the quorum nodes (docs/quorum.md)."""
