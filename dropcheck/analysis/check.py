"""Sites -> findings. Most rules are a table from site kind to rule; DC004 and DC006 look wider."""
from __future__ import annotations

from collections import defaultdict

from ..records import Finding, Rule, Site, SiteKind

# site kind -> (rule code, fix advice); the rule's name and severity come from rules/
_BY_SITE: dict[SiteKind, tuple[str, str]] = {
    SiteKind.TRUNK_PRE_BN: ("DC001", "move it into a residual branch after the last BatchNorm and before the "
                                     "last weight layer (P6), or to the head before global pooling (H4)"),
    SiteKind.BRANCH_PRE_BN: ("DC001", "move it after the branch's last BatchNorm and activation, before its last "
                                      "weight layer (P5/P6); a branch ending in BatchNorm takes it at its end"),
    SiteKind.HEAD_PRE_BN: ("DC001", "move it after the head's BatchNorm and activation, before global pooling (H4)"),
    SiteKind.HEAD_POST_GAP: ("DC002", "move it before global pooling, after the head's last BatchNorm and "
                                      "activation (H4)"),
    SiteKind.HEAD_LOGITS: ("DC003", "remove it from the predictions; put dropout before global pooling (H4)"),
    SiteKind.BRANCH_POST_WEIGHT: ("DC005", "move it before the branch's last weight layer (P6): PreDropout has "
                                           "less variance shift than PostDropout when E[W] != 0"),
    SiteKind.UNUSED: ("DC007", "call it in forward where it belongs, or delete it so nobody believes it is on"),
}
_PRE_BN_FIX = "put it where no BatchNorm follows before a residual merge: P6 in a branch, H4 in the head"
_ALWAYS_ON_FIX = "pass training=self.training (or use an nn.Dropout module) so eval() switches it off"
_REPEATED_FIX = "keep one dropout per residual branch, after the last BatchNorm and before the last weight layer"


def run_rules(sites: list[Site], rules: dict[str, Rule], enabled: frozenset[str] | None = None) -> list[Finding]:
    """Findings for every active site, in site order; only rules in `enabled` (all when None)."""
    findings: list[Finding] = []
    repeated = repeated_in_branch(sites)
    for site in sites:
        candidates: list[tuple[str, str, str]] = []
        if site.active and site.reaches:  # DC001 is reachability, whatever else the site is
            advice = _BY_SITE.get(site.site, ("DC001", _PRE_BN_FIX))
            candidates.append(("DC001", _message("DC001", site), advice[1] if advice[0] == "DC001" else _PRE_BN_FIX))
        if site.active or site.site is SiteKind.UNUSED:
            entry = _BY_SITE.get(site.site)
            if entry and entry[0] != "DC001":
                candidates.append((entry[0], _message(entry[0], site), entry[1]))
        if site.id in repeated:
            others = ", ".join(s for s in repeated[site.id])
            candidates.append(("DC004", f"{site.id} is one of several dropouts in the residual branch merging at "
                                        f"{site.merge} (with {others})", _REPEATED_FIX))
        if site.always_on:
            candidates.append(("DC006", f"{site.op}(p={site.p:g}) in {site.module or 'the root forward'} stays "
                                        "active in eval mode", _ALWAYS_ON_FIX))
        for code, message, fix in candidates:
            if code not in rules or (enabled is not None and code not in enabled):
                continue
            rule = rules[code]
            findings.append(Finding(rule=code, name=rule.name, severity=rule.severity, dropout=site.id,
                                    message=message, fix=fix, reaches=site.reaches, source=site.source))
    return findings


def _message(code: str, site: Site) -> str:
    where = f" at {site.paper_position}" if site.paper_position else ""
    if code == "DC001":
        reached = ", ".join(site.reaches[:3]) + (" ..." if len(site.reaches) > 3 else "")
        return (f"{site.op}(p={site.p:g}){where} reaches BatchNorm {reached} before any residual "
                "merge: its train-time variance differs from test time, so the BatchNorm's statistics are wrong "
                "at test time")
    if code == "DC002":
        return (f"{site.op}(p={site.p:g}){where} comes after global pooling: dropping whole pooled "
                "channels gives the output more variance than dropping before the pool")
    if code == "DC003":
        return f"{site.op}(p={site.p:g}){where} drops the model's predictions: no weight layer follows"
    if code == "DC005":
        return (f"{site.op}(p={site.p:g}){where} follows the branch's last weight layer "
                "(PostDropout)")
    if code == "DC007":
        return f"{site.op}(p={site.p:g}) is declared but forward never calls it"
    return site.why


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
