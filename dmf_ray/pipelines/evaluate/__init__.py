"""Downstream evaluation, ``dmf evaluate``: ``run`` (the workflow) and its building blocks (no Ray, no torch).

Modules, imported explicitly by callers (nothing is re-exported here, so importing the
package stays cheap):

- ``tasks``: load a benchmark task (folder, three files, or one file + computed split).
- ``splits``: Bemis-Murcko scaffold split, random split, scaffold overlap.
- ``metrics``: NaN-masked multi-task ROC-AUC / RMSE / MAE.
- ``downstream``: the one downstream learner used for every row of the table.
- ``report``: tables, CSVs, figures and ``summary.json`` from per-task results.
"""
