"""tongban (通办): a three-tier service-station platform with an embedded CouchDB-compatible store."""

__version__ = "0.1.0"
