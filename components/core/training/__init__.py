"""Training, evaluation and the registry: fitting, metrics, importance, blessing, MLflow."""
