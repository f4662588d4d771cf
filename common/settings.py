"""What every typed settings class shares: pydantic validation, and problems that name their key.

The pipeline config (`jobs/config.py`) and the model settings (`tokenizer/settings.py`,
`dynamics/settings.py`) are validated by the same pydantic machinery, so a bad value
anywhere is reported as `dotted.key: given X, expected Y` without any error text parsed.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict
from pydantic_core import PydanticCustomError

# Unknown keys are errors: a typo must not silently fall back to a default. Assignments are
# checked like construction, so code that sets a value cannot slip past a rule either.
STRICT = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def problem(key: str, given: Any, expected: str) -> PydanticCustomError:
    """A cross-field error naming the offending key relative to the class that raises it."""
    return PydanticCustomError(
        "stvideo_problem", "{key}: {expected}", {"key": key, "given": given, "expected": expected}
    )
