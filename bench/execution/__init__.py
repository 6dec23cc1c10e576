"""Execution: train or load a model, compress, fine-tune and measure it; plan and run the jobs.

    train.py       the one training loop every method uses (the budget reaches the optimizer here)
    measure.py     params/MACs with torch-pruning's counter, latency, spectra
    provenance.py  package versions and the digest of the source that shapes a trained model
    cache.py       trained-model checkpoints, keyed on everything that determines the weights
    distributed.py data parallel training under torchrun (a no-op otherwise)
    job.py         one job: trained model, dense measurements, one record (and model) per target
    executors.py   where jobs run: in this process, or through submitit (SLURM, local, debug)
    runner.py      plans a run's jobs (resuming), hands them to an executor, appends the records

Imports point one way: runner → executors → job → cache / train / measure, and all of them
down to ``bench.catalog`` and ``bench.records``; nothing here calls back up.
"""
