"""Searching over models: ensembles of trained runs and their fitted combination
(`metamodal.search.ensemble`)."""
