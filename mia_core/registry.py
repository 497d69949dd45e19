"""One registry per concept (attacks, defenses, datasets, models, searches): a name -> spec mapping that the
CLI, the app and the store all read, and that says which names are valid when a name is unknown."""

from __future__ import annotations

import contextlib
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that is not in a registry; the message lists the valid ones."""


class Registry(Generic[T]):
    """Ordered specs by name. `get` raises UnknownName listing the valid names; `register` refuses a clash."""

    def __init__(self, concept: str):
        self.concept = concept
        self._specs: dict[str, T] = {}

    def register(self, spec: T) -> T:
        name = spec.name  # type: ignore[attr-defined]
        if name in self._specs:
            raise ValueError(f"{self.concept} '{name}' is registered already.")
        self._specs[name] = spec
        return spec

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)

    @contextlib.contextmanager
    def registered(self, spec: T) -> Iterator[T]:
        """Register `spec` for the duration of a `with` block (for tests and plug-ins tried out)."""
        self.register(spec)
        try:
            yield spec
        finally:
            self.unregister(spec.name)  # type: ignore[attr-defined]

    def get(self, name: str) -> T:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownName(f"Unknown {self.concept} '{name}'. Choose one of {', '.join(self._specs)}.") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def specs(self) -> tuple[T, ...]:
        return tuple(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._specs))

    def __len__(self) -> int:
        return len(self._specs)

    def __getitem__(self, name: str) -> T:
        return self.get(name)
