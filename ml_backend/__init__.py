"""Label Studio ML backend and plain JSON predict API over the connector's text classifier."""
