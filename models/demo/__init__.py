"""The embedded demo model's world: captioned coloured shapes, and a checker that reads them back.

Everything here is numpy only: the data generator feeds the training recipe, and the checker
is the end-to-end quality oracle (prompt fidelity) for every backend and precision.
"""
