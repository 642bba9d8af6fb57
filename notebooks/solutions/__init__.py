"""Worked solutions to the chapters' exercises: `solutions.chNN.exercise_K` is the answer to exercise
K of chapter NN, in the form its check (`exercises.chNN.exercise_K`) takes: a value, a function, or a
small record; the reasoning is in its docstring or comments. `MISTAKES` maps each exercise number to
a plausible wrong answer, which the check must reject. Try the exercise before you read on.
"""
