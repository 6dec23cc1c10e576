"""Records, torch-free: the ``Record`` and its JSONL file, the errors that become a record's status,
the file names of a run folder, reading records back from any source, the regression gate and the
regression history.

    results.py  Record, atomic JSONL append, RESULTS / CONFIG / BENCH_KEY file and key names
    errors.py   UsageError (bad input, one line), TrainingDiverged (failed), NotApplicable (skipped),
                BudgetMismatch (a void comparison, refused before it is written)
    sources.py  records from run folders, results JSONL and pytest-benchmark JSON
    compare.py  the regression gate: new records against a reference, cell by cell
    history.py  runs kept by commit (pytest-benchmark's storage), series per cell, changes beyond the noise

Nothing here imports torch or another part of ``bench``, so ``reports`` sits strictly above it.
"""
