"""Benchmarks: scripts that write the figures of BENCHMARKS.md, and the mesh-bench package (benchmarks.mesh)."""
