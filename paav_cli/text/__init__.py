"""Text-only helpers: instruction templates, output cleaning and validation, token budgets."""
