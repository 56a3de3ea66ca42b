"""From a request to a computed answer: loaded versions, routing, runners and statistics."""
