"""The embedded CouchDB-compatible document store."""

from shared.store.store import Store

__all__ = ["Store"]
