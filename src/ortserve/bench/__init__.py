"""Benchmarking: the `ortserve bench` load generator and its result statistics.

Its command-line flags live in `ortserve.cli.bench` (cheap to import); `ortserve.bench.loadgen`
holds the asyncio generator itself; `ortserve.bench.stats` the percentile and summary arithmetic.
"""
