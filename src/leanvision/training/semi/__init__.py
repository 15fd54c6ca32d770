"""Training with unlabelled images beside the labelled ones: FixMatch inside the fit loop
(fixmatch.py, set up by setup.py) and self-training by rounds of pseudo-labels
(self_training.py)."""
