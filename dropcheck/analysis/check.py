"""Sites -> findings, as the rule pages say (rules/*.md front matter, parsed by rule_page).

A rule fires on a site when the page lists the site's kind (`sites`, or `any`) and the page's
condition (`fires-when`) holds; the finding's message and fix advice are the page's templates
filled with the site's fields. The engine itself knows only the conditions and the fields.

Torch-free: rule_page imports CONDITIONS and MESSAGE_FIELDS to validate pages, and
`dropcheck rules` must not import torch.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from ..records import Finding, Rule, Site, SiteKind


@dataclass(frozen=True)
class Context:
    """What a condition may know beyond its own site: facts about all the sites together."""

    repeated: dict[str, list[str]]  # site id -> the other active dropouts in its residual branch


def _reaches_batchnorm(site: Site, context: Context) -> bool:
    return site.active and bool(site.reaches)


def _live_at_site_kind(site: Site, context: Context) -> bool:
    # an unused dropout is never active (forward never calls it), yet its p > 0 is the point
    return site.active or site.site is SiteKind.UNUSED


def _repeated_in_branch(site: Site, context: Context) -> bool:
    return site.id in context.repeated


def _always_on(site: Site, context: Context) -> bool:
    return site.always_on


# A page's `fires-when` -> when it holds (besides the site kind). The order is the order of the
# findings on one site, so that output stays stable whatever the codes.
CONDITIONS: dict[str, Callable[[Site, Context], bool]] = {
    "reaches-batchnorm": _reaches_batchnorm,  # a data path reaches a BatchNorm before any residual merge
    "site-kind": _live_at_site_kind,  # a live dropout: the site kind alone decides
    "repeated-in-branch": _repeated_in_branch,  # one of several in a residual branch, not the one kept
    "always-on": _always_on,  # still live in the eval-mode graph
}
# The fields a page's `message` and `fix` templates may use, all text (see _fields): id (the site id),
# op and p ("Dropout", "0.2"), at (" at P3" where the block matches the paper's figures, else empty),
# owner (the module whose forward runs it, or "the root forward"), reached (the first three BatchNorms
# it reaches, then " ..."), merge (the residual merge ending its branch), others (the rest of that branch).
MESSAGE_FIELDS = ("id", "op", "p", "at", "owner", "reached", "merge", "others")


def run_rules(sites: list[Site], rules: dict[str, Rule], enabled: frozenset[str] | None = None) -> list[Finding]:
    """Findings for every site, in site order; only rules in `enabled` (all when None)."""
    chosen = sorted((r for code, r in rules.items() if enabled is None or code in enabled), key=_firing_order)
    context = Context(repeated=repeated_in_branch(sites))
    return [_finding(rule, site, context) for site in sites for rule in chosen if _fires(rule, site, context)]


def _fires(rule: Rule, site: Site, context: Context) -> bool:
    """The page's site kinds and its condition: nothing else decides."""
    return rule.fires_on(site.site) and CONDITIONS[rule.fires_when](site, context)


def _firing_order(rule: Rule) -> tuple[int, str]:
    return list(CONDITIONS).index(rule.fires_when), rule.code


def _finding(rule: Rule, site: Site, context: Context) -> Finding:
    fields = _fields(site, context)
    return Finding(rule=rule.code, name=rule.name, severity=rule.severity, dropout=site.id,
                   message=rule.message.format(**fields), fix=rule.advice(site.site, site.paper_position).format(**fields),
                   reaches=site.reaches, source=site.source)


def _fields(site: Site, context: Context) -> dict[str, str]:
    """MESSAGE_FIELDS for one site, as text."""
    more = " ..." if len(site.reaches) > 3 else ""
    return {
        "id": site.id,
        "op": site.op,
        "p": f"{site.p:g}",
        "at": f" at {site.paper_position}" if site.paper_position else "",  # where it matches the paper
        "owner": site.module or "the root forward",
        "reached": ", ".join(site.reaches[:3]) + more,
        "merge": site.merge or "",
        "others": ", ".join(context.repeated.get(site.id, ())),
    }


def repeated_in_branch(sites: list[Site]) -> dict[str, list[str]]:
    """Extra active dropouts per residual branch -> the others in that branch (DC004)."""
    by_merge: dict[str, list[Site]] = defaultdict(list)
    for s in sites:
        in_branch = s.site in (SiteKind.BRANCH_PRE_BN, SiteKind.BRANCH_GUIDELINE, SiteKind.BRANCH_POST_WEIGHT)
        if s.active and in_branch and s.merge and s.opaque is None:
            by_merge[s.merge].append(s)
    extra: dict[str, list[str]] = {}
    for group in by_merge.values():
        if len(group) < 2:
            continue
        keep = next((s for s in group if s.site is SiteKind.BRANCH_GUIDELINE), group[-1])
        for s in group:
            if s is not keep:
                extra[s.id] = [o.id for o in group if o is not s]
    return extra
