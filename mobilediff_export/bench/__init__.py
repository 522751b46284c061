"""The benchmark harness behind ``mobilediff bench`` and ``mobilediff check``.

```
host.py        host mode: per component and backend, end to end, each in its own process
worker.py        the process that measures one thing and prints its result as JSON
peak.py          this CPU's fp32 matmul peak, measured in the same run
phone.py       phone mode over adb: push (by sha256), run per delegate, pull, judge the budget
adb.py           adb by serial, failures classified (disconnected, full, missing)
devicestate.py   getprop, df, dumpsys thermalservice / meminfo parsers
fit.py         fit check from device profiles (devices/*.json): an estimate, labelled so
report.py      results JSON (schemas/bench_result.schema.json), Markdown, PNG chart
commands.py    the CLI: add_bench_commands(subparsers)
```
Scripts that produce the checked-in results (paper scale, peers) live in ``benchmarks/``
and call this package; ``paper.py`` and ``peers.py`` hold their measuring code.
"""
