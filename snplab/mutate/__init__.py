"""``snplab mutate``: the suite's bug-finding power, measured.

The suite runs once per fault of the catalog (``snplab.emu.faults``) on the emulated platform,
restricted to the ABI profiles where the fault can change anything; every failing test is a
*kill*.  A fault is *killed* when some failing test names one of the properties the fault
breaks, *weakly killed* when tests fail but none names such a property (only a crash,
``run_completed`` or an unrelated check noticed), and *survives* when no test fails.

Modules: ``runner`` (one pytest process per fault, in parallel), ``matrix`` (the per-test records
turned into the kill matrix; the ``mutate.json`` document, schema ``mutate.schema.json``),
``html`` (``mutate.html``), ``cli`` (the subcommand).
"""

from snplab.mutate.matrix import SCHEMA_ID, FaultOutcome, MutateReport, TestKill

__all__ = ["SCHEMA_ID", "FaultOutcome", "MutateReport", "TestKill"]
