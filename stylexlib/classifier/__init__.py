"""The classifier being explained: its network, training and evaluation."""
