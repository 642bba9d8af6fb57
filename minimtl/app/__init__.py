"""The application layer, between the command line (minimtl/cli.py, which only parses) and the library.

config.py    the run configuration: model, train and data sections, resolved and checked
presets.py   small (the default), demo, full
run.py       prepare the data, train, evaluate, report; evaluate a checkpoint
predict.py   a checkpoint's detections on image files, as COCO results
"""
