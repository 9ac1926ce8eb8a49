"""DUEL: duplicate elimination on active memory for class-imbalanced self-supervised learning."""
