"""Run reports: everything under ``reports/<run-id>/``.

Layout (DESIGN.md "Reports")::

    reports/<run-id>/junit.xml            pytest's JUnit XML (written by the controller)
    reports/<run-id>/tests/<case>.json    one per suite case (``run_record``)
    reports/<run-id>/artifacts/<case>/    on failure (or --keep-artifacts): transcript, report
                                          and certificate bytes per step, guest log
    reports/<run-id>/summary.json         per-family counts (``summary``, the controller)
    reports/<run-id>/summary.html         the HTML summary (``summary_html``)

Modules: ``run_dir`` (the directory layout, atomic writes), ``run_record`` (per-case JSON and
artifacts), ``host_facts``, ``summary`` (per-family tally), ``summary_html``, ``compare`` (A/B
diff of two runs) and ``compare_cli`` (``snplab compare``).
"""
