"""What the saved runs show: the tables and verdicts each chapter draws, computed here so that
the book shows them and the tests guard them. One module per chapter; a claim's code is where
its chapter is:

- :mod:`~muonlib.results.comparison`: the XS chapter (M14, M15, M17, M18) and the protocols page;
- :mod:`~muonlib.results.ladders`: the scaling (M15, M16, M18, M21) and batch-size (M19, M20, M26, M27) chapters;
- :mod:`~muonlib.results.ablations`: Table 2 (M22);
- :mod:`~muonlib.results.architectures`: Table 3 and the companion papers' quality claims (M23, M24, E3-E8, A1, A2), and the
  models chapter's count of expert combinations (E6);
- :mod:`~muonlib.results.probes`: attention entropy (M28);
- :mod:`~muonlib.results.stability`: every run read for spikes (M17 over the book);
- :mod:`~muonlib.results.decode`: decoding (E1, E2, A3);

and beside them :mod:`~muonlib.results.paper` (every number quoted from the papers),
:mod:`~muonlib.results.rules` (the verdict labels as code), :mod:`~muonlib.results.protocols`
(an experiment's verdicts under each protocol, side by side) and :mod:`~muonlib.results.runs`
(the rows every comparison's tables are made of). Rates were chosen on the validation split;
the losses reported are on the test split.
"""

from .ablations import AblationProtocols, AblationResults, optimizer_state_bytes
from .architectures import TABLE3_ARCHITECTURES, ArchitectureProtocols, ArchitectureResults, expert_combinations_row, training_throughput
from .comparison import ComparisonResults, ProtocolComparison, kind_table, repeat_sweeps, repeat_table
from .decode import DecodeResults
from .ladders import BatchSizeProtocols, BatchSizeResults, LadderResults, ScalingProtocols, ScalingResults
from .paper import (ADAMW_ARM, BASELINE, PAPER, PAPER_INFERENCE, PAPER_QUALITY, PAPER_R, PAPER_TABLE2, PAPER_TABLE3, QUOTES,
                    TABLE1_RATES, TABLE1_XS_RATE, Quote)
from .probes import SHARP_HEAD, ProbeResults
from .rules import CONDITIONAL, OPEN, REFUTED, UNTESTABLE, VERIFIED, band_verdict, combine_verdicts, conjunction, gain_verdict, label, saving_band
from .runs import NOISE_SIGMAS, OPTIMIZER_LABELS, OPTIMIZERS, TARGET_OFFSETS
from .stability import every_run_table, runs_verdict, stability_table, stability_verdict

__all__ = ["ADAMW_ARM", "BASELINE", "CONDITIONAL", "NOISE_SIGMAS", "OPEN", "REFUTED", "UNTESTABLE", "VERIFIED", "OPTIMIZERS", "OPTIMIZER_LABELS", "PAPER", "PAPER_INFERENCE", "PAPER_QUALITY",
           "PAPER_R", "PAPER_TABLE2", "PAPER_TABLE3", "QUOTES", "SHARP_HEAD", "TABLE1_RATES", "TABLE1_XS_RATE",
           "TABLE3_ARCHITECTURES", "TARGET_OFFSETS", "AblationProtocols", "AblationResults", "ArchitectureProtocols", "ArchitectureResults", "BatchSizeProtocols", "BatchSizeResults", "ComparisonResults",
           "DecodeResults", "LadderResults", "ProbeResults", "ProtocolComparison", "Quote", "ScalingProtocols", "ScalingResults", "band_verdict",
           "combine_verdicts", "conjunction", "every_run_table", "expert_combinations_row", "gain_verdict", "kind_table", "label", "optimizer_state_bytes", "repeat_sweeps", "repeat_table", "runs_verdict", "saving_band", "stability_table",
           "stability_verdict", "training_throughput"]
