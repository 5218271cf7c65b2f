"""What compiling one graph did: rewrites per pass, copies added, reductions left uncovered.

Passes write into the report attached to the graph they rewrite; the backend keeps every report
of the process so that users, the demo and the CLI can ask what happened (``ascend_compile.reports()``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UncoveredNode:
    """An order-sensitive reduction the pipeline left as it was."""

    node: str
    target: str
    reason: str
    source: str


@dataclass(frozen=True)
class AddedCopy:
    """A copy made on every call because a template cannot read an operand's layout: a ``clone``
    the pipeline inserted, or (``inside_template``) one the template makes itself."""

    node: str
    operand: str
    bytes_per_call: str
    inside_template: bool = False


@dataclass
class CompileReport:
    graph: str
    device: str
    executor: str
    rewrites: dict[str, int] = field(default_factory=dict)
    uncovered: list[UncoveredNode] = field(default_factory=list)
    copies: list[AddedCopy] = field(default_factory=list)
    #: How the compiled graph runs: device graphs per bucket (which, or why exact sizes only),
    #: or uncaptured and why.
    graphs: str = ""

    @property
    def batch_invariant(self) -> bool:
        """True when no order-sensitive reduction was left uncovered."""
        return not self.uncovered

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"batch_invariant": self.batch_invariant}


_reports: list[CompileReport] = []


def record(report: CompileReport) -> None:
    _reports.append(report)


def reports() -> list[CompileReport]:
    """Reports of every graph ``ascend_bi`` compiled in this process, oldest first.

    Empty until a graph compiles (the first call of a compiled model): ``eager_mode()`` compiles
    nothing and adds none."""
    return list(_reports)


def clear_reports() -> None:
    _reports.clear()
