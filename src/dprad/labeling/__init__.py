"""Teachers that label reports on premises, and their agreement with gold labels."""
