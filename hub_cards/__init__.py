"""Card templates (Jinja, rendered by `faceptor.commands.cards`) and the tables the cards are filled from:
`paper_results.json` (the paper's numbers for the authors' weights) and `training_datasets.json` (which
dataset each official task was trained on, its slug and a summary of its terms)."""
