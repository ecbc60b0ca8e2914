"""``metamodal serve``: a run's classifier behind an HTTP API and a web page, where tasks
(classes defined by a few examples) are created, kept and queried.

Modules: `store` (tasks in SQLite), `engine` (encoding and prediction through
`metamodal.classifier.FewShotClassifier`), `forms` (samples from multipart forms), `app` (the
FastAPI app). The page's files are in ``page/``. Needs the ``serve`` extra.
"""
