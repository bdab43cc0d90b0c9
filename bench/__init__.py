"""``make bench``: what graceful_web costs while serving and how fast it stops, side by side
with the bare servers. Not part of the test suite; nothing here asserts a speed."""
