"""The release of a retrained version (pure): registered → (approved by an operator, when
the policy asks for it) → rolling out. The monitor starts the rollout of a version ready to
go once no other rollout holds the devices."""

from __future__ import annotations

from enum import StrEnum


class Release(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # an operator must approve it first
    PENDING_ROLLOUT = "pending_rollout"  # the policy rolls it out by itself
    APPROVED = "approved"
    ROLLING_OUT = "rolling_out"  # its rollout exists (the rollout tells the rest)


READY = (Release.PENDING_ROLLOUT, Release.APPROVED)  # the monitor starts these


def registered(auto_rollout: bool) -> Release:
    """Where a challenger starts once it is registered."""
    return Release.PENDING_ROLLOUT if auto_rollout else Release.AWAITING_APPROVAL


def approved(current: str | None) -> Release | None:
    """After an operator's approval; ``None`` when the version does not wait for one."""
    return Release.APPROVED if current == Release.AWAITING_APPROVAL else None


def rolling_out(current: str | None) -> Release | None:
    """Once its rollout is created; ``None`` when the version was not ready to go."""
    return Release.ROLLING_OUT if current in READY else None
