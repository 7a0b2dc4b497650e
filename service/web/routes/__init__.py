"""HTTP and WebSocket edges, one Blueprint per audience: internal (publishers), ops, public, ws."""
