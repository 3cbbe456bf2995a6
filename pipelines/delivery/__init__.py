"""Delivery of compiled pipelines: Kubeflow Pipelines, Vertex AI (templates, runs,
schedules) and the cron expressions both read."""
