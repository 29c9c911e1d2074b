"""Test stand-in for NVlabs/cBottle (see tests/standin/README.md)."""
