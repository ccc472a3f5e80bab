"""Four-backbone classification ensemble with a stacked meta-learner."""
