"""Data and validation: reading tables, their columns, schemas, and the checks against them."""
