"""A churn-like table as real exports look: an id, dates, a timestamp, free text, a boolean,
categories and numbers with missing values, and a yes/no label that depends on them."""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ("basic", "standard", "premium")
NOTES = (
    "called about a billing error on the last invoice",
    "asked how to upgrade the plan before the holidays",
    "no complaints, happy with the service so far",
    "reported slow speeds in the evening several times",
    "wants a discount or will switch to another provider",
)


def churn_table(rows: int = 600, seed: int = 7) -> pd.DataFrame:
    """``rows`` customers, seeded: ``churned`` is likelier for short tenure, high charges,
    the basic plan and customers who signed up in December."""
    rng = np.random.default_rng(seed)
    signup = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 900, rows), unit="D")
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(70, 25, rows).round(2)
    plan = rng.choice(PLANS, rows)
    risk = (
        -1.5
        - 0.04 * tenure
        + 0.03 * (charges - 70)
        + 1.2 * (plan == "basic")
        + 1.0 * (signup.month == 12)
    )
    churned = rng.random(rows) < 1 / (1 + np.exp(-risk))
    table = pd.DataFrame(
        {
            "customer_id": [f"C-{100000 + i}" for i in rng.permutation(rows)],
            "signup_date": signup.strftime("%Y-%m-%d"),
            "last_contact": (
                signup + pd.to_timedelta(rng.integers(0, 86400 * 30, rows), "s")
            ).strftime("%Y-%m-%dT%H:%M:%S"),
            "plan": plan,
            "tenure_months": tenure,
            "monthly_charges": charges,
            "paperless_billing": rng.random(rows) < 0.6,
            "support_notes": [
                f"{NOTES[i % len(NOTES)]} (ticket {j})"
                for i, j in zip(
                    rng.integers(0, len(NOTES), rows), rng.permutation(rows), strict=True
                )
            ],
            "churned": np.where(churned, "yes", "no"),
        }
    )
    return _with_gaps(table, rng)


def _with_gaps(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Missing values as an export has them: a few charges, contacts, notes and booleans."""
    table = table.astype({"paperless_billing": object, "monthly_charges": float})
    for column, share in [
        ("monthly_charges", 0.05),
        ("last_contact", 0.1),
        ("support_notes", 0.2),
        ("paperless_billing", 0.05),
    ]:
        table.loc[rng.random(len(table)) < share, column] = None
    return table
