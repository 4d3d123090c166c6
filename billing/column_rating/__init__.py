"""Vectorised rating over columns: a batch of usage records priced with array operations.

``rate_columns(batch, catalogue, plans)`` takes a ``billing.columns.USAGE_SCHEMA``
batch and the plan id of each row, and returns a ``billing.columns.RATED_SCHEMA``
batch equal, row for row and field for field, to ``billing.rating.rate`` on each
record (a Hypothesis property holds it to that). The scalar rater stays the
reference and prices the few rows the arrays do not cover (see ``rater``).
``RatedRows(usage, rated, catalogue)`` shows rated columns as those outcomes,
row by row, for the code that still needs a ``RatedRecord``.
"""

from billing.column_rating.rater import RatedColumns, rate_columns
from billing.column_rating.rows import RatedRows

__all__ = ["RatedColumns", "RatedRows", "rate_columns"]
