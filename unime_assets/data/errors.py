"""The one error type of the data layer: bad input data, located by file, row and field."""

from __future__ import annotations

from typing import Any


class DataValidationError(ValueError):
    """Input data breaks its format. The message names the file, the row and the field.

    A ValueError subclass so callers that already catch ValueError keep working. `row` is the
    0-based row (parquet) or record index (JSON) inside `file`; None for file-level defects
    (a missing column). `count` is the total number of findings; `findings` (a polars frame, see
    `unime_assets.data.validation`) carries all of them when validation produced the error.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
        count: int = 1,
        findings: Any = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.row = row
        self.field = field
        self.count = count
        self.findings = findings
