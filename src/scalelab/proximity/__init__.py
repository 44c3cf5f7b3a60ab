"""Proximity service (ch. 1): nearby business search (LBS) and the business service."""
