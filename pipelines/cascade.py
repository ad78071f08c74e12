"""The judge cascade in the streaming pipeline: small judges first, then a gate, then the large panels.

A category with `cascade: {panel: SMALL, escalate_below: P}` plans its rows naming only the small panel's
judges (pipelines/records.plan_table). The judge pools run in two phases (`order_judges`): every judge of
a small panel, then the escalation gate (`escalation_gate`, a stateless Ray Data task), then the other
judges. The gate labels each cascade row from the small panel's votes and, where the rule escalates
(pipelines/voting.escalates: undecided, or confidence below P), adds the large panel's judges to the row's
`judges`; a large judge's pool fills only rows that name it, so on the rows the small panel decided it
runs no model at all. The label step applies the same rule to the same votes (voting.panel_decision), so
the record's `decided_by` says which panel's verdict it is.
"""

from __future__ import annotations

import pyarrow as pa

from pipelines.voting import escalates, label_by, row_votes
from schemas.config import RunConfig
from workers.runtime import column, with_columns


def small_judges(cfg: RunConfig) -> set[str]:
    """The judges of the run's cascades' small panels: they run before the gate."""
    return {j for c in cfg.categories.values() if c.cascade for j in cfg.panels[c.cascade.panel].judges}


def order_judges(cfg: RunConfig, judges: list[str]) -> list[str]:
    """The judge pools' order: small-panel judges first (config order within each phase). The config check
    (RunConfig._check_cascades) makes sure no large-panel judge of a cascade is among them unless it is in
    that cascade's small panel too, where its votes serve both panels."""
    early = small_judges(cfg)
    return sorted(judges, key=lambda j: j not in early)


def escalation_gate(batch: pa.Table, cfg: RunConfig) -> pa.Table:
    """Rows of cascade categories whose small-panel label escalates get their large panel's judges added to
    `judges` (a list of names); every other row passes unchanged. Rows a pool failed on keep `stage_error` and are skipped
    by the later pools anyway."""
    judges = column(batch, "judges")
    categories, errors, votes = column(batch, "category"), column(batch, "stage_error"), column(batch, "votes")
    out = list(judges)
    for i, (category, error) in enumerate(zip(categories, errors)):
        ccfg = cfg.categories.get(category)
        if error or ccfg is None or ccfg.cascade is None or not judges[i]:
            continue
        small = label_by(cfg.panels[ccfg.cascade.panel], row_votes({"votes": votes[i]}))
        if escalates(small, ccfg.cascade.escalate_below):
            named = list(judges[i])
            out[i] = named + [j for j in cfg.panels[ccfg.panel].judges if j not in named]
    return with_columns(batch, judges=pa.array(out, pa.list_(pa.string())))
