"""Discovery sources: where the writer learns which endpoints each service has."""
