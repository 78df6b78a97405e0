"""The study: what reproduces the research report's table on top of `training` (which trains,
evaluates and exports each run): the report's runs, `python -m study grid` to train them several at
a time, `python -m study report` for results/RESULTS.md and its plots, and the analysis scripts
behind results/FINDINGS.md and results/DEFAULT_MODEL.md (study/scripts/, each run with
`python -m study.scripts.NAME`)."""
