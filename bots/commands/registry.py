"""An instance holding the declared commands; help is generated from the declarations."""

from __future__ import annotations

from collections.abc import Iterable

from .spec import CommandSpec


class CommandRegistry:
    def __init__(self, specs: Iterable[CommandSpec] = ()) -> None:
        self._specs: dict[str, CommandSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: CommandSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"command !{spec.name} declared twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name)

    def for_role(self, role: str) -> list[CommandSpec]:
        return [s for s in self._specs.values() if s.allows(role)]

    def help_text(self, role: str) -> str:
        """One line per command: its generated usage (every form) and its help."""
        lines = ["Commands you can use:"]
        for spec in sorted(self.for_role(role), key=lambda s: s.name):
            lines.append(f"{spec.usage_line} — {spec.help}")
        return "\n".join(lines)
