"""The pytest-benchmark suite: one benchmark per preset cell, collected by ``pytest bench``.

    pytest bench --preset quick --benchmark-json out.json   # time every cell, keep the records
    lorita-bench report out.json --out R                    # tables and figures from that JSON alone
    pytest bench --preset ci --benchmark-disable --lorita-compare reference/ci.jsonl   # the accuracy gate

See ``bench/suite/plugin.py`` for the options and for how timings are gated.
"""
