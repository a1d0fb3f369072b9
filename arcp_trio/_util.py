"""Small building blocks shared across the package."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

__all__ = ["NoPublicConstructor"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """A metaclass for classes only the package builds (trio's idiom, STYLE.md).

    ``Cls(...)`` raises ``TypeError``; the package calls ``Cls._create(...)``. Users get
    instances from the documented entry point (``open_runtime``), which owns their
    lifetime.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor "
            "(use its documented entry point)"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]
