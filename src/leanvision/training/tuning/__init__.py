"""Choosing a training recipe's settings before the real run: the learning-rate range test
(lr_find.py) and one run per optimizer at its found rate (compare.py)."""
