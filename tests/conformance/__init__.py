"""Autobahn|Testsuite conformance harness (see test_autobahn.py)."""
