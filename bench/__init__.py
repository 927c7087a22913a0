"""Stream-proxy benchmark: the same scenarios through nginx and through pyngx, alternating.

Not part of the test suite: nothing here asserts on timing. See bench/README.md.
"""
