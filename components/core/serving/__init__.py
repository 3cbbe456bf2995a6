"""Serving: the KServe predictor, its HTTP layer, request decoding and the payload log."""
