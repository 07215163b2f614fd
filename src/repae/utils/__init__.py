"""Small shared helpers (atomic file writes, distributed helpers, seeding)."""
