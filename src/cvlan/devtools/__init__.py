"""cvlan.devtools: development-only code that drives the product but is not part of it.

The namespace lab (`lab`), the ephemeral PostgreSQL starter (`pgcluster`), the controller and
enrolment harness (`harness`) and `make demo` (`demo`), shared by the tests, the benchmarks and the
simulator. No product layer imports this package (an
import-linter contract in pyproject.toml); cvlan-sim, itself a bench tool, starts PostgreSQL with it."""

__all__ = ["demo", "harness", "lab", "pgcluster"]
