"""Conveyor's KFP components, one module each: ingest, validate, train, evaluate, register,
deploy, and drift (for monitoring).

Import a component from its module (``from conveyor.components.train import train``). This
package imports nothing itself: inside a running step KFP hides ``dsl.component``
(``_KFP_RUNTIME``), and the step's imports of ``conveyor.components.core`` pass through here.
"""

__all__ = ["deploy", "drift", "evaluate", "ingest", "register", "train", "validate"]
