"""Nearby friends (ch. 2): live friend locations over WebSocket, fanned out by pub/sub."""
