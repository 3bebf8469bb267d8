"""Prunable units: what a method scores and what surgery removes.

A *prunable unit* is one group of coupled channels, named after the conv that produces them, plus
every tensor slice that must go with one channel: its BN channel and the matching input channel of
each consumer (methods/README.md, "Conventions"). Methods return one score per channel of each unit;
surgery removes channels unit by unit; the FLOPs model prices a plan from the same description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

Side = Literal["out", "in"]


@dataclass(frozen=True)
class Member:
    """One module slice that a unit's channel removal touches.

    ``side="out"`` slices the module's output channels (a conv's filters, a BN's features);
    ``side="in"`` slices its input channels (the next conv, or a linear layer after flatten, where
    each channel covers ``in_features / channels`` consecutive features).
    """

    module: str
    side: Side


@dataclass(frozen=True)
class PrunableUnit:
    """A group of ``channels`` coupled channels, produced by conv ``name``."""

    name: str
    channels: int
    members: tuple[Member, ...]

    @property
    def producer(self) -> str:
        """The root conv producing this unit's channels. A DepGraph unit may have more convs on its
        "out" side (a residual add's inputs); scorers use them all (``importance.member_filters``)."""
        return self.name

    def modules(self, side: Side) -> tuple[str, ...]:
        return tuple(m.module for m in self.members if m.side == side)


def chain_unit(conv: str, channels: int, bn: str | None, consumers: tuple[str, ...]) -> PrunableUnit:
    """The common direct-path unit: conv -> (BN) -> consumers' inputs."""
    members = [Member(conv, "out")]
    if bn is not None:
        members.append(Member(bn, "out"))
    members.extend(Member(c, "in") for c in consumers)
    return PrunableUnit(conv, channels, tuple(members))


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule`` with the name in the error."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise KeyError(f"model has no module named {name!r}") from exc
