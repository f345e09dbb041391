"""Training side of the project: the CT phantom, data preparation and loading, training, evaluation."""
