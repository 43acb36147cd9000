"""The hyperparameter grid shared by the domain-adaptation benchmarks
(not a benchmark itself): every method with its key hyperparameter, and
"none" so that unsupervised selection can decline to adapt."""

P = "domainadapttransformer__"
GRID = [
    {P + "method": ["none"]},
    {P + "method": ["coral"], P + "reg": [1e-3, 1e-2, 1.0]},
    {P + "method": ["sa"], P + "n_components": [20, 50, 100]},
    {P + "method": ["tca"], P + "mu": [0.1, 1.0, 10.0]},
    {P + "method": ["ot"], P + "ot_reg": [0.05, 0.1, 0.5]},
    {P + "method": ["jda"], P + "mu": [0.1, 1.0]},  # the paper's two values
]
GRID_QUICK = [
    {P + "method": ["none"]},
    {P + "method": ["coral"], P + "reg": [1e-2]},
    {P + "method": ["sa"], P + "n_components": [50]},
]
