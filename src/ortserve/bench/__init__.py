"""Benchmarking: the `ortserve bench` load generator and its result statistics.

`ortserve.bench.args` only defines command-line flags (cheap to import); `ortserve.bench.loadgen`
holds the asyncio generator itself; `ortserve.bench.stats` the percentile and summary arithmetic.
"""
