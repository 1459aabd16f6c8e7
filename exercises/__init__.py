"""Graded exercises, CS231n style: write the functions of each exercise_0K_*.py file, then
run it to grade them (``--solution`` grades the worked solution in ``solutions/``)."""
