"""The sync daemon: a CouchDB-protocol replicator and its scheduler."""
