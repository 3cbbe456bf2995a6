"""Drift and monitoring: data and prediction drift, online quality from labels, the
monitoring verdict, and the Pushgateway it is reported to."""
