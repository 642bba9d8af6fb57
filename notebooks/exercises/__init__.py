"""Checks for the chapters' exercises: `exercises.chNN.exercise_K(answer)` returns quietly when the
answer to exercise K of chapter NN is right, and raises an AssertionError that says what is wrong
otherwise. A chapter imports its module as `check` in the cell after its exercises:

    from exercises import ch01 as check
    check.exercise_2(my_answer)

The worked solutions are in `notebooks/solutions/chNN.py`; tests/test_exercises.py runs every
solution through its check, and every recorded mistake (`solutions.chNN.MISTAKES`) too, which the
check must reject.
"""
