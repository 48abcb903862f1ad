"""Run reports: everything under ``reports/<run-id>/``.

Layout (DESIGN.md "Reports")::

    reports/<run-id>/junit.xml            pytest's JUnit XML (written by the controller)
    reports/<run-id>/tests/<case>.json    one per suite case (``run_record``)
    reports/<run-id>/artifacts/<case>/    on failure (or --keep-artifacts): transcript, report
                                          and certificate bytes per step, guest log
    reports/<run-id>/summary.json         per-family counts, completeness (``summary``)
    reports/<run-id>/index.html           the run dashboard (``index_html``)
    reports/<run-id>/results.tap          kselftest-style TAP 13 (``tap``)
    reports/<run-id>/kcidb.json           KCIDB v5.3 I/O data (``kcidb``)

Modules: ``run_dir`` (the directory layout, atomic writes), ``run_record`` (per-case JSON and
artifacts), ``host_facts``, ``summary`` (per-family tally, summary.json), ``run_view`` (a run
directory read back), ``run_reports`` (writes index/TAP/KCIDB), ``html_page`` (the pages'
frame and header), ``svg_charts``, ``case_transcript`` (a guest run's step-by-step story and
exit timeline), ``index_html``, ``tap``, ``kcidb``, ``compare`` (A/B diff of two runs),
``compare_html`` and ``compare_cli`` (``snplab compare``).
"""
