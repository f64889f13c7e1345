"""Studies that measure what a method does on a testbed (CAT fidelity, purification): built on the
algorithm packages, used by benchmarks/ and the fidelity tests; nothing in the library imports them."""
