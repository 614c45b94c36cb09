"""The web base shared by every tier."""
