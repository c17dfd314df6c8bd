"""Training the genre CNN on Ray Train."""
