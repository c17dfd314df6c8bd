"""The harness: benchmarks, reliability scenarios, the fault proxy, XLA export and
replay, the synthesized evaluation set. Nothing in the product imports it."""
