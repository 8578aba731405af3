"""RETA = FADRM + DRC + PTA, with nothing else changed (same layout, budget and schedule).

`reta` runs the settings chosen on held-out data (docs/reta.md); `reta-paper` the paper's
literal ones (persistence images, class sum, lambda_topo = 0.5, infinite bars at 1, raw features
for retrieval), kept as their own method so both appear in every table.

Revision 1: PTA's real reference is built from whole real images even when DRC retrieves RDED
patches (before, drc.pool=patches also changed PTA's target, so RETA's PTA was not pta's).
Revision 2: the RDED patches of DRC's pool are drawn from the fixed pool seed, not the run's, so
the pool is built once per teacher (strategy.POOL_SEED). `reta-paper` retrieves whole images,
which draw nothing, so its results did not change.
"""

from __future__ import annotations

from reta.recover.drc import DRC_DEFAULTS, with_retrieval
from reta.recover.methods import fadrm_method
from reta.recover.pta import PTA_DEFAULTS, with_topology
from reta.recover.strategy import Context, Method, register


def reta_method(ctx: Context) -> Method:
    return with_topology(ctx, with_retrieval(ctx, fadrm_method(ctx)))


register("reta", "RETA: FADRM with retrieved anchors (DRC) and topology alignment (PTA), held-out-chosen settings",
         reads=("drc", "pta"), revision=2, init="rded", num_stages=4, drc=DRC_DEFAULTS, pta=PTA_DEFAULTS)(reta_method)
register("reta-paper", "RETA with the paper's literal settings (persistence images, class sum, lambda_topo 0.5)",
         reads=("drc", "pta"), revision=1, init="rded", num_stages=4)(reta_method)
