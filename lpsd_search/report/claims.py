"""Promotion claims: marker studies whose creation claims the promotion of one trial.

A claim is a study of the same storage named ``<study>:promotion-claim:<trial>.<generation>``
(``strategy.promotion.claim_promotion`` creates it; a unique name makes the creation atomic),
holding its ``claimant`` (``host:pid``) and, once given up, ``released``. This module spells
those keys, as ``report.record`` spells the search's.
"""

from __future__ import annotations

from lpsd_search.report.record import Attributed, Writable

CLAIM_INFIX = ":promotion-claim:"
CLAIMANT = "claimant"
RELEASED = "released"
CLAIM_KEYS = (CLAIMANT, RELEASED)
"""A promotion claim study's keys (``strategy.promotion``)."""


def claim_study_name(study_name: str, number: int, generation: int) -> str:
    """The marker study whose creation claims the promotion of trial ``number``."""
    return f"{study_name}{CLAIM_INFIX}{number}.{generation}"


def is_claim_study(name: str) -> bool:
    """Whether a study of the storage is a promotion claim rather than a search."""
    return CLAIM_INFIX in name


def set_claimant(claim: Writable, worker: str) -> None:
    claim.set_user_attr(CLAIMANT, worker)


def claimant(claim: Attributed) -> str | None:
    """Who holds the claim (None in the instant between its creation and this write)."""
    found = claim.user_attrs.get(CLAIMANT)
    return None if found is None else str(found)


def release_claim(claim: Writable) -> None:
    """Give the claim up: the promotion did not happen and may be claimed again."""
    claim.set_user_attr(RELEASED, True)


def is_released(claim: Attributed) -> bool:
    return bool(claim.user_attrs.get(RELEASED, False))
