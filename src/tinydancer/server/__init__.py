"""The HTTP service and what it leans on: storage, the wire decoder, the learning loop."""
