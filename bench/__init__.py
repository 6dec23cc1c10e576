"""The lorita-bench harness, grouped by stage so that imports point one way:

    records/    torch-free: Record and its JSONL, errors, file names, reading sources, the gate
    catalog/    the registry with every dataset, model, method and preset (timm-style)
    execution/  one job (train or load, compress, fine-tune, measure), executors, the runner
    frontend.py the one function both front ends use to resolve a preset and check it runs here
    cli.py      ``lorita-bench``: list, run, report, compare, history
    suite/      the pytest-benchmark suite, collected by ``pytest bench``

cli, suite → frontend → execution → catalog → records; reports → records only (the cli renders
reports, so reports never import the harness that trains).
"""
