"""The regional catalog: item schema, signed releases, activation, authoring, transfer."""
