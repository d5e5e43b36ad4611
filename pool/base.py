"""The base of hivemem's pydantic models: frozen, strict about extra fields, and raising the
package's own typed errors instead of pydantic's ``ValidationError``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from hivemem.pool.errors import InvalidInput


def _translate(exc: ValidationError, default: type[InvalidInput]) -> InvalidInput:
    """Our typed error for pydantic's: the class a validator raised (InvalidContent,
    InvalidIdentifier...) or ``default``, with the dotted path of the first failing field."""
    first = exc.errors(include_url=False, include_input=False)[0]
    path = ".".join(str(p) for p in first["loc"]) or None
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, InvalidInput):
        return type(cause)(str(cause), field=cause.field or path)
    return default(f"{path}: {first['msg']}" if path else first["msg"], field=path)


class Model(BaseModel):
    """Frozen pydantic model whose validation failures raise :attr:`error` (an InvalidInput)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    error: ClassVar[type[InvalidInput]] = InvalidInput

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _translate(exc, self.error) from None

    # Tell pydantic this __init__ only wraps BaseModel's: nested models are then built inside
    # pydantic-core, as for a plain BaseModel, instead of through a Python call of this
    # __init__ each (a received 10-record envelope decoded in half the time). Errors of nested
    # models reach the outermost model's translation, with their full path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _translate(exc, cls.error) from None

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any
    ) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise _translate(exc, cls.error) from None
