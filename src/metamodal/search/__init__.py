"""``metamodal search``: random, grid and Bayesian (TPE) search over learners, fusions,
encoders and their hyper-parameters, built on Optuna.

Modules: `space` (the settings varied, from TOML), `study` (storage, sampler, pruner),
`report` (trials table, best config, plots); the objective, which trains with
`metamodal.api.train` and scores with `metamodal.api.evaluate`, is `metamodal.api.search`'s.
"""
