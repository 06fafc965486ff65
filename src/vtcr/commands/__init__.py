"""One module per CLI verb; see vtcr.cli."""
