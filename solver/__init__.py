"""The solver: matches job offers with resource offers and submits deals."""
