"""POST /v1/predict: multiple-choice answers from the student, in the trainer's input format."""
